"""The settings as dataclasses: ``Settings``, the whole of ``gpulab.yaml``, and one class
per section of it (``hub``, ``gpus``, ``servers``, ``storage``, ``jobs``, ``serving``,
``sharing``, ``kubernetes``; ``Profile`` for each of ``profiles``).

This is the one description of gpulab's settings: each field's type and default, and
its meaning in the string literal under it, from which :mod:`gpulab.hub.settings_schema`
generates the JSON Schema, the chart's ``values.schema.json`` and the tables of
``docs/configuration.md``. Sizes and durations stay text here; the ``*_bytes`` and
``*_seconds`` properties parse them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .units import SettingsError, parse_duration, parse_size


@dataclass
class Profile:
    """A choice on the spawn form: what a server gets."""

    slug: str
    """Short name used in the API (``{"profile": "gpu-1"}``) and the form."""
    display_name: str = ""
    """What the spawn form shows; defaults to the slug."""
    description: str = ""
    """A line under the display name on the spawn form."""
    gpus: int = 0
    """GPUs granted to a server started with this profile."""
    default: bool = False
    """Pre-selected on the form, and used when a spawn names no profile (with no default
    profile: the first one)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for servers of this profile."""
    idle_return: str = ""
    """Return the GPUs of a server of this profile, keeping its state, after they have been
    idle this long (``30m``, ``2h``, ``900`` seconds); empty or ``0``: never
    (docs/return-gpu.md)."""
    gpu_type: str = ""
    """Kubernetes backend: only nodes whose ``kubernetes.gpu_type_label`` has this value
    (``NVIDIA-A100-SXM4-80GB``); empty: any GPU node."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Kubernetes backend: node labels a server of this profile needs (``{pool: gpu}``)."""
    tolerations: list[dict] = field(default_factory=list)
    """Kubernetes backend: pod tolerations (``key``, ``operator`` ``Equal`` or ``Exists``,
    ``value``, ``effect``, ``tolerationSeconds``), e.g. for GPU nodes tainted
    ``nvidia.com/gpu:NoSchedule``."""

    @property
    def idle_return_seconds(self) -> float:
        return parse_duration(self.idle_return, f"profiles.{self.slug}.idle_return")


def _default_profiles() -> list[Profile]:
    return [
        Profile(slug="cpu", display_name="CPU only", gpus=0, default=True),
        Profile(slug="gpu-1", display_name="1 GPU", gpus=1),
        Profile(slug="gpu-2", display_name="2 GPUs", gpus=2),
    ]


@dataclass
class GpuSettings:
    ids: list[str] = field(default_factory=list)
    """Device ids to hand out, as ``CUDA_VISIBLE_DEVICES`` takes them. Empty: every GPU NVML
    reports, by UUID (none without a driver). Kubernetes backend: GPU slots ``<node>/<n>``;
    empty: one slot per GPU each schedulable node advertises, read at hub start."""
    per_user: int = -1
    """Most GPUs one user may hold at once over all their servers; -1: no limit."""
    users: dict[str, int] = field(default_factory=dict)
    """Per-user limits that replace ``per_user`` for the named users (``{alice: 4}``)."""
    groups: dict[str, int] = field(default_factory=dict)
    """Most GPUs the members of a JupyterHub group may hold together (``{students: 2}``)."""
    acquire_timeout: int = 600
    """Seconds a Get GPU waits in the queue by default (a request may ask for less)."""
    reclaim_interval: int = 60
    """Seconds between checks for idle GPUs (profiles' ``idle_return``), which are also the
    samples of each server's GPU utilisation for usage accounting (docs/usage.md)."""
    idle_return_when_queued: str = "2m"
    """While requests wait in the queue for GPUs, a server of a profile with an
    ``idle_return`` gives its GPUs back (keeping its state) once idle this long, if that
    is sooner than its profile's; empty or ``0``: the profile's alone
    (docs/return-gpu.md)."""
    idle_utilization: int = 5
    """A GPU busier than this (percent, from NVML) is not idle, and counts as busy in usage
    accounting."""
    kernel_checkpoint: str = "auto"
    """How Return GPU keeps a kernel on the local backend: ``auto`` parks with the CUDA
    driver (r570+) the kernels whose variables cannot all be saved, ``driver`` every
    kernel on the GPU, ``namespace`` none (each restarts on the CPU with its variables);
    docs/return-gpu.md."""
    checkpoint_generations: int = 2
    """How many of a notebook's kernel checkpoints its server keeps on the home, in
    ``~/.gpulab/checkpoints``, once one was restored (``gpulab gpu checkpoints`` lists and
    restores them); one whose restore failed is kept until its owner restores or deletes it."""

    @property
    def idle_return_when_queued_seconds(self) -> float:
        return parse_duration(self.idle_return_when_queued, "gpus.idle_return_when_queued")


@dataclass
class HubSettings:
    ip: str = ""
    """Address the public proxy listens on; empty means all interfaces."""
    port: int = 8000
    """The public port (the proxy's)."""
    hub_port: int = 8081
    """Port of the hub's internal API (loopback), which user servers talk to."""
    proxy_api_port: int = 8001
    """Port of the proxy's REST API (loopback)."""
    admin_users: list[str] = field(default_factory=lambda: ["admin"])
    """Hub admins. The first one is bootstrapped with a password on first start."""
    admin_password: str = ""
    """Password for the bootstrapped admin; empty: a random one, printed once in the hub log.
    With ``gpulab`` accounts it must follow the password rule (at least 8 characters, not a
    common password), or the hub refuses to start and says why."""
    admin_password_file: str = ""
    """Path of a root-only (0600) file holding ``admin_password`` instead
    (docs/security.md#secrets)."""
    authenticator: str = "gpulab"
    """``gpulab`` (password accounts: sign-up at ``/hub/signup``, admin approval at
    ``/hub/authorize``, ``/hub/change-password``; passwords need at least 8 characters and
    must not be common: ``c.GpulabAuthenticator.minimum_password_length`` in ``extra_config``
    changes the length), or any JupyterHub authenticator short name or class (``github``,
    ``generic-oauth``, ``ldapauthenticator.LDAPAuthenticator``, ``pam``); configure it
    further in ``extra_config``."""
    open_signup: bool = False
    """With the gpulab authenticator: new sign-ups may log in without admin approval."""
    extra_config: str = ""
    """Path of a Python file run after gpulab's own configuration, with ``c`` (the
    JupyterHub config) and ``settings`` in scope. Add to what gpulab set rather than
    replace it: ``c.JupyterHub.tornado_settings.update({...})`` keeps gpulab's SameSite
    cookies."""


@dataclass
class ServerSettings:
    unix_user_prefix: str = "gl-"
    """Prefix of the unix account each hub user's server runs as when the hub is root: hub
    user ``alice`` runs as ``gl-alice`` (created on first spawn, no password, home
    ``data_root/homes/alice``, mode 0700). Names with characters outside ``a-z0-9_-``, longer
    than 20, or ending like a hash (``-`` and 6 hex digits) are cleaned and suffixed with a
    hash; each derived name is recorded for its hub user at first use (``gpulab.sqlite``),
    and a second hub name that maps to it is refused (409), never given the same account."""
    default_url: str = "/lab"
    """Where a started server opens."""
    start_timeout: int = 120
    """Seconds a server may take to start before the spawn fails."""
    environment: str = ""
    """Local backend: the user environment kernels, terminals and jobs run in (a folder
    made by ``spawner/userenv.py``: a venv, the base packages, a kernel spec), apart from
    gpulab's own; users add to it with ``pip install --user``. Empty: ``.user-env`` beside
    gpulab's environment, which ``scripts/install`` makes (docs/environments.md)."""


@dataclass
class StorageSettings:
    ceph_conf: str = ""
    """Path of ceph.conf for RBD home volumes (the kubernetes backend); empty: no RBD."""
    ceph_client: str = "admin"
    """cephx client id the hub connects as: ``admin``, or in production a narrower one
    (``profile rbd`` on ``rbd_pool``, docs/storage.md#cephx-and-keyrings)."""
    ceph_keyring: str = ""
    """That client's keyring (root only, never given to users); empty: the one ceph.conf names."""
    rbd_pool: str = "rbd"
    """The pool RBD home images live in."""
    home_size: str = "10GiB"
    """Size of a new home volume; for directory homes, the size reported (enforced with
    ``home_quota``). Bytes, or a number with a unit: ``10GiB``, ``500MB``."""
    home_max_size: str = "100GiB"
    """Largest size users may grow their own home to; admins may go beyond."""
    home_quota: bool = False
    """Local backend: enforce each home's size with an ext4 filesystem in a file per home,
    loop-mounted on it (the hub must run as root; docs/storage.md#home-volumes). Off: the size
    is only reported."""
    s3_endpoint: str = ""
    """Ceph RGW (or any S3 with RGW's admin API) URL; set, every user gets an S3 bucket and
    keys (docs/storage.md); empty: no per-user S3."""
    s3_admin_access_key: str = ""
    """Access key of an RGW admin (caps ``users=*;buckets=*``) for RGW's admin ops API, needed
    with ``s3_endpoint``. Never given to users."""
    s3_admin_secret_key: str = ""
    """That admin's secret key. Never given to users."""
    s3_admin_access_key_file: str = ""
    """Path of a root-only (0600) file holding ``s3_admin_access_key`` instead
    (docs/security.md#secrets)."""
    s3_admin_secret_key_file: str = ""
    """Path of a root-only (0600) file holding ``s3_admin_secret_key`` instead."""
    s3_quota: str = "50GiB"
    """Most bytes a user may store in S3; -1: no limit."""
    s3_prefix: str = "gpulab-"
    """Bucket names and RGW user ids: prefix + the user's name (docs/storage.md)."""

    @property
    def home_size_bytes(self) -> int:
        return parse_size(self.home_size, "storage.home_size")

    @property
    def home_max_size_bytes(self) -> int:
        return parse_size(self.home_max_size, "storage.home_max_size")

    @property
    def s3_quota_bytes(self) -> int | None:
        n = parse_size(self.s3_quota, "storage.s3_quota", allow_unlimited=True)
        return None if n < 0 else n


@dataclass
class JobSettings:
    restart_backoff: str = "2s"
    """Wait before the first restart of a failed replica; doubled for each further one
    (at most a minute)."""
    stop_grace: str = "5s"
    """How long a replica being stopped (its job ended or was cancelled) has after SIGTERM
    before it is killed."""
    log_copy_limit: str = "64MiB"
    """Kubernetes backend: the most of each replica's log the hub keeps in its data root
    (older output is dropped from the copy; the whole log stays on the user's home)."""

    @property
    def restart_backoff_seconds(self) -> float:
        return parse_duration(self.restart_backoff, "jobs.restart_backoff")

    @property
    def stop_grace_seconds(self) -> float:
        return parse_duration(self.stop_grace, "jobs.stop_grace")

    @property
    def log_copy_limit_bytes(self) -> int:
        return parse_size(self.log_copy_limit, "jobs.log_copy_limit")


@dataclass
class ServingSettings:
    poll: str = "1s"
    """How often a model server looks for new version folders (and config changes)."""
    max_replicas: int = 8
    """The most replicas one model may have (1 to 64)."""
    start_timeout: str = "5m"
    """How long a model server may take to answer after it starts (loading its first
    version) before it is restarted."""
    image: str = "tensorflow/serving:2.21.0"
    """Kubernetes backend: the model server image of CPU replicas."""
    gpu_image: str = "tensorflow/serving:2.21.0-gpu"
    """Kubernetes backend: the model server image of GPU replicas."""
    sync_folder: str = "/models"
    """Kubernetes backend: where a model from S3 is copied in its pod (TF Serving reads
    no s3:// paths); the S3 sidecar runs the notebook image (``kubernetes.image``)."""

    @property
    def poll_seconds(self) -> float:
        return parse_duration(self.poll, "serving.poll")

    @property
    def start_timeout_seconds(self) -> float:
        return parse_duration(self.start_timeout, "serving.start_timeout")


@dataclass
class EnvironmentSettings:
    registry: str = ""
    """The OCI registry environment snapshots are pushed to (``https://registry.example.com``,
    ``http://10.0.0.5:5000``); empty: the embedded one, Debian's ``docker-registry`` on
    loopback with a password only the hub holds, started by the hub when first needed
    (its data under ``data_root/registry``; docs/environments.md#snapshots)."""
    registry_username: str = ""
    """The account the hub pushes and pulls as (basic auth); users never hold it."""
    registry_password: str = ""
    """That account's password."""
    registry_password_file: str = ""
    """Path of a root-only (0600) file holding ``registry_password`` instead."""
    repository: str = "gpulab/environments"
    """Where in the registry snapshots go: ``<repository>/<user>:<name>``."""
    embedded_port: int = 0
    """Loopback port of the embedded registry; 0: a free one, chosen at its first start
    and kept."""
    max_per_user: int = 10
    """Most snapshots a user may keep."""
    max_size: str = "10GiB"
    """Largest user layer a snapshot may hold (unpacked bytes)."""

    @property
    def max_size_bytes(self) -> int:
        return parse_size(self.max_size, "environments.max_size")


@dataclass
class SharingSettings:
    """Users sharing their servers with teammates (docs/sharing.md)."""

    enabled: bool = True
    """Users may share their running servers: links that a teammate accepts, and shares
    with a named hub user or group. A guest works in the server as its owner (files, S3
    keys, GPU); the owner sees who has access and revokes it."""
    max_expiry: str = "30d"
    """The longest a share link may last (60s to 365d); the Share dialog offers no longer,
    and the hub refuses a longer one. Access already given lasts until it is revoked."""
    groups: list[str] = field(default_factory=list)
    """Only members of these JupyterHub groups may share their servers (the groups are
    made if missing); empty: every user may."""
    user_directory: bool = False
    """Users may list the hub's user and group names (suggestions in the Share dialog).
    Off: they share with a teammate by typing their exact hub name, or with one of their
    own groups."""

    @property
    def max_expiry_seconds(self) -> int:
        return int(parse_duration(self.max_expiry, "sharing.max_expiry"))


@dataclass
class KubernetesSettings:
    """Where and how the kubernetes backend runs user servers (docs/kubernetes.md)."""

    namespace: str = ""
    """Namespace of user pods, volumes and secrets; empty: the hub's own namespace
    (in a cluster) or ``default``."""
    image: str = ""
    """The notebook image: JupyterLab, ``jupyterhub-singleuser`` and gpulab installed.
    Required with this backend."""
    image_pull_policy: str = "IfNotPresent"
    """When the node pulls ``image``: ``Always``, ``IfNotPresent`` or ``Never``."""
    gpu_resource: str = "nvidia.com/gpu"
    """The extended resource a GPU is requested as (``nvidia.com/mig-1g.10gb``,
    ``amd.com/gpu``)."""
    gpu_type_label: str = "nvidia.com/gpu.product"
    """Node label a profile's ``gpu_type`` is matched against (GPU feature discovery's)."""
    storage_class: str = "ceph-rbd"
    """StorageClass of home volumes: ceph-csi RBD with ``allowVolumeExpansion``."""
    home_mount: str = "/home/jovyan"
    """Where the home volume is mounted in the pod (and ``HOME``)."""
    unschedulable_timeout: int = 60
    """Seconds a server's pod may wait unschedulable (no node fits) before its spawn
    fails with the scheduler's reason."""
    delete_grace_period: int = 1
    """Seconds a stopping server's pod gets to exit before it is killed."""
    hub_connect_ip: str = "hub"
    """Address pods reach the hub's API at (its Service name; the Helm chart sets its full
    name); the proxy, beside the hub, reaches it on 127.0.0.1."""
    uid: int | None = 1000
    """The account user servers and job pods run as (``runAsUser``): the image's user,
    ``jovyan`` (1000) in the Jupyter images; null: the image's own."""
    gid: int | None = 100
    """Their group (``runAsGroup``, and ``fsGroup``, so the home claim is writable); null:
    the image's own."""
    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain, in the names job replicas reach each other at."""
    gpu_tolerations: list[dict] = field(default_factory=list)
    """Tolerations of every pod that asks for GPUs (servers, job and model replicas; added
    to a server profile's own), e.g. ``[{key: nvidia.com/gpu, operator: Exists, effect:
    NoSchedule}]`` for tainted GPU nodes."""
    kubeconfig: str = ""
    """Path of a kubeconfig; empty: the in-cluster service account, else ``$KUBECONFIG``
    or ``~/.kube/config``."""


@dataclass
class Settings:
    backend: str = "local"
    """Where servers run: ``local`` (processes on this machine) or ``kubernetes`` (pods on a
    cluster, docs/kubernetes.md)."""
    data_root: str = ""
    """Where homes (``homes/<user>``), server logs (``logs/``), the GPU ledger
    (``gpulab.sqlite``), the hub database and the CLI token live; empty: ``/var/lib/gpulab``
    as root, else ``~/.local/share/gpulab``."""
    hub: HubSettings = field(default_factory=HubSettings)
    """The hub, its proxy and how users log in."""
    gpus: GpuSettings = field(default_factory=GpuSettings)
    """The GPUs handed out, and quotas on them."""
    servers: ServerSettings = field(default_factory=ServerSettings)
    """Users' notebook servers."""
    storage: StorageSettings = field(default_factory=StorageSettings)
    """Home volumes and per-user S3."""
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    """The kubernetes backend (docs/kubernetes.md)."""
    jobs: JobSettings = field(default_factory=JobSettings)
    """Training jobs (docs/jobs.md)."""
    serving: ServingSettings = field(default_factory=ServingSettings)
    """Model servers (docs/serving.md)."""
    sharing: SharingSettings = field(default_factory=SharingSettings)
    """Share links and shares with teammates (docs/sharing.md)."""
    environments: EnvironmentSettings = field(default_factory=EnvironmentSettings)
    """Environment snapshots and the registry they go to (docs/environments.md)."""
    profiles: list[Profile] = field(default_factory=_default_profiles)
    """The choices on the spawn form; set in the file only (no environment override)."""

    @property
    def data_path(self) -> Path:
        if self.data_root:
            return Path(self.data_root).expanduser().resolve()
        if os.geteuid() == 0:
            return Path("/var/lib/gpulab")
        return Path("~/.local/share/gpulab").expanduser()

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.data_path / 'gpulab.sqlite'}"

    def profile(self, slug: str | None) -> Profile:
        """The profile named ``slug``, or the default one when ``slug`` is None."""
        if slug is None:
            return next((p for p in self.profiles if p.default), self.profiles[0])
        for p in self.profiles:
            if p.slug == slug:
                return p
        known = ", ".join(p.slug for p in self.profiles)
        raise SettingsError(f"unknown profile {slug!r}; known profiles: {known}")
