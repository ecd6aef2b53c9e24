"""The hub process's gpulab context: settings, inventory and ledger, made once."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .inventory import Gpu, cluster_gpus, configured, discover
from .ledger import GpuLedger
from .names import registry
from .secretfiles import read_secret_files
from .settings import Settings, load_settings
from .storage.s3 import RgwAccounts


@dataclass
class Context:
    settings: Settings
    inventory: list[Gpu]
    ledger: GpuLedger
    s3: RgwAccounts | None
    """Per-user S3 on Ceph RGW, when storage.s3_endpoint is set."""


@functools.cache
def context() -> Context:
    """Settings, the GPU inventory and the ledger of this process (read once)."""
    settings = load_settings()
    read_secret_files(settings)
    if settings.backend == "kubernetes" and settings.kubernetes.kubeconfig:
        from .kube import use_kubeconfig

        use_kubeconfig(settings.kubernetes.kubeconfig)
    if settings.backend == "kubernetes" and not settings.gpus.ids:
        k8s = settings.kubernetes
        inventory = cluster_gpus(k8s.gpu_resource, k8s.gpu_type_label)
    elif settings.backend == "kubernetes":
        inventory = configured(settings.gpus.ids)
    else:
        inventory = discover(settings.gpus.ids)
    ledger = GpuLedger(settings.ledger_url, inventory, settings.gpus)
    st = settings.storage
    s3 = None
    if st.s3_endpoint:
        s3 = RgwAccounts(
            st.s3_endpoint,
            st.s3_admin_access_key,
            st.s3_admin_secret_key,
            bucket_prefix=st.s3_prefix,
            uid_prefix=st.s3_prefix,
            quota_bytes=st.s3_quota_bytes,
            names=registry(settings.data_path),  # RGW users and buckets are claimed names
        )
    return Context(settings=settings, inventory=inventory, ledger=ledger, s3=s3)
