"""fakekube: the project's one sanctioned test double, a Kubernetes cluster in-process.

A server speaking the real Kubernetes REST API over HTTP (what kubernetes_asyncio,
KubeSpawner and helm use), with a simulated scheduler, kubelets and controllers behind
it, serving what gpulab uses and nothing else. ``README.md`` here says what it fakes,
for which product code, and what it does not; ``tests/`` holds its own tests.

Use from tests (``tests/`` is on ``sys.path``)::

    from fakekube import FakeKube

    with FakeKube(nodes=[{"name": "gpu-node-1", "gpus": 2}], run_containers=True) as kube:
        kube.url          # http://127.0.0.1:<free port>
        kube.kubeconfig   # a kubeconfig file for KUBECONFIG (KubeSpawner needs one)
        token = kube.service_account_token("gpulab", "gpulab-hub")  # see ``rbac``
        kube.kubeconfig_for(token)  # a kubeconfig acting as that ServiceAccount
        kube.faults.fail("create", "pods", status=500, times=2)  # see ``faults``
        kube.drop_watches()

Served: core/v1 namespaces, pods (+status, log), services, secrets, configmaps,
serviceaccounts, events, nodes, persistentvolumeclaims, persistentvolumes; apps/v1
deployments and replicasets; storage.k8s.io/v1 storageclasses;
rbac.authorization.k8s.io/v1 roles, rolebindings, clusterroles, clusterrolebindings;
discovery, ``/version`` and ``/openapi/v2`` (no definitions). Plain HTTP at ``url`` (for
kubeconfigs), HTTPS at ``https_port`` with the cluster CA's certificate (``tls``), where
pods' in-cluster clients reach it with their mounted token. Bodies are JSON, or
protobuf for Secrets, ConfigMaps and DeleteOptions (``protobuf``, as helm sends them).
Requests are authenticated (the admin's token, or none, or a ServiceAccount's from
``service_account_token``) and a ServiceAccount's authorized by RBAC (``rbac``).

Ports with ``run_containers=True``: every pod's ``podIP`` is 127.0.0.1 and its
processes share this host's network, so two pods cannot both listen on 8888 as they
would on a real cluster. A test must give each pod that listens a port of its own:
pick a free one and put it both in the command line (``--port=N``; for KubeSpawner set
``c.KubeSpawner.port = N`` per spawn, e.g. from a ``pre_spawn_hook``) and in the
container's ``ports[].containerPort``; probes and clients then reach ``127.0.0.1:N``.
Service cluster IPs (10.96.0.0/12) are allocated and reported but do not route here; a
Service's DNS names resolve to 127.0.0.1 inside pods (as root, see ``dns``), so a pod
that listens on the Service's port number is reached at its name. Pod hostname records
of headless Services (``<hostname>.<subdomain>.<ns>.svc.cluster.local``, as a
distributed job's replicas find each other) resolve inside pods to 127.0.0.1 when
FakeKube runs as root: see ``dns`` and ``containers``; not as root, no cluster name
resolves.

Volumes (as root, see ``volumes``): ConfigMaps, Secrets, emptyDirs, the projected
service account token and claims of the CSI hostpath driver (``hostpath.csi.k8s.io``)
are mounted at their paths in a container's own mount namespace; claims of other
drivers (ceph-csi's RBD) are not: their ``mountPath`` is the host's own folder.
"""

from .cluster import NodeSpec
from .server import FakeKube

__all__ = ["FakeKube", "NodeSpec"]
