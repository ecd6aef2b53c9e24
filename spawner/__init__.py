"""gpulab spawners: profiles, the local GPU spawner."""
