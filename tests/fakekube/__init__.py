"""fakekube: the project's one sanctioned test double, a Kubernetes cluster in-process.

Kubernetes cannot run on the test machines, so the kubernetes backend is tested
against this: a server speaking the real REST API over HTTP (what kubernetes_asyncio,
KubeSpawner and kubectl use), with a simulated scheduler, kubelets and controllers
behind it. It imitates the real behaviour and wording; where it cannot, it says so
(here and in each module's docstring) rather than pretend.

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
deployments and replicasets; batch/v1 jobs; storage.k8s.io/v1 storageclasses;
rbac.authorization.k8s.io/v1 roles, rolebindings, clusterroles, clusterrolebindings;
discovery, ``/version`` and ``/openapi/v2`` (no definitions). Plain HTTP at ``url`` (for
kubeconfigs), HTTPS at ``https_port`` with the cluster CA's certificate (``tls``), where
pods' in-cluster clients reach it with their mounted token. Bodies are JSON, or
protobuf for Secrets, ConfigMaps and DeleteOptions (``protobuf``, as helm sends them).
Requests are authenticated (the admin's token, or none, or
a ServiceAccount's from ``service_account_token``) and a ServiceAccount's authorized by
RBAC, as the apiserver does (``rbac``). Module map:

- ``store``: objects, the cluster-wide resourceVersion, change history, watchers;
- ``registry`` + ``defaults`` + ``validation`` + ``admission`` + ``patch`` +
  ``selectors``: the apiserver's request semantics;
- ``api``: HTTP routing, watch streaming, logs (also followed); ``rbac``:
  authentication and RBAC authorization; ``faults``: injected failures;
- ``scheduler``, ``kubelet`` (+ ``containers``, ``volumes``, ``probes``), ``storage``,
  ``workloads``, ``gc``, ``dns``: the simulated components, on ``controller``'s loop;
- ``cluster``: wiring and the kubeadm-like initial state; ``server``: ``FakeKube``.

Ports with ``run_containers=True``: every pod's ``podIP`` is 127.0.0.1 and its
processes share this host's network, so two pods cannot both listen on 8888 as they
would on a real cluster. A test must give each pod that listens a port of its own:
pick a free one (``hubfixture.free_port()``) and put it both in the command line
(``--port=N``; for KubeSpawner set ``c.KubeSpawner.port = N`` per spawn, e.g. from a
``pre_spawn_hook``) and in the container's ``ports[].containerPort``; probes and
clients then reach ``127.0.0.1:N``. Service cluster IPs (10.96.0.0/12) are allocated
and reported but do not route here; a Service's DNS names resolve to 127.0.0.1 inside
pods (as root, see ``dns``), so a pod that listens on the Service's port number is
reached at its name. Pod hostname
records of headless Services (``<hostname>.<subdomain>.<ns>.svc.cluster.local`` for a
pod with ``spec.hostname`` and ``spec.subdomain``, as a distributed job's replicas find
each other) do resolve inside pods, to 127.0.0.1, when FakeKube runs as root: see
``dns`` (the records, ``kube.hosts_file``) and ``containers`` (each container process
sees them as its ``/etc/hosts``); not as root, no cluster name resolves.

Volumes (as root, see ``volumes``): ConfigMaps, Secrets, emptyDirs, the projected
service account token and claims of the CSI hostpath driver (``hostpath.csi.k8s.io``)
are mounted at their paths in a container's own mount namespace; claims of other
drivers (ceph-csi's RBD) are not: their ``mountPath`` is the host's own folder.

Not imitated (a real cluster would; tests must not rely on these): container images
(commands run from the host's filesystem), RBD claims' volumes, resource limits
enforcement, network policy, Endpoints/EndpointSlices (``dns`` computes the
endpoints it needs itself), cluster DNS beyond Service names and pod hostname records
(SRV records, ``resolv.conf``), anonymous requests (a request without a token is the
admin), RBAC's escalation checks and aggregated ClusterRoles (see ``rbac``),
server-side apply (415), ``dryRun``, ``fieldValidation``, OpenAPI schemas and
``/openapi/v3``, ``/scale``, static PV binding, preemption (no PriorityClasses are
served), Job ``podFailurePolicy``/``successPolicy``/``suspend``, paused Deployments
and ``WaitForFirstConsumer`` storage classes (these are refused with 422 so a test
cannot silently rely on them).
"""

from .cluster import NodeSpec
from .server import FakeKube

__all__ = ["FakeKube", "NodeSpec"]
