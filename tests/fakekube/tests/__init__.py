"""fakekube's own tests: the fake against the real clients (kubernetes_asyncio,
KubeSpawner's reflectors, requests), asserting what a real cluster answers."""
