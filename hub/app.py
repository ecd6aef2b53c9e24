"""The hub process's gpulab context: settings, backend, inventory and ledger, made once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .inventory import Gpu
from .ledger import GpuLedger
from .names import registry
from .secretfiles import read_secret_files
from .settings import Settings, load_settings
from .storage.s3 import RgwAccounts

if TYPE_CHECKING:
    from gpulab.spawner.backend import Backend


@dataclass
class Context:
    settings: Settings
    backend: Backend
    """Where workloads run: this machine or a cluster (``gpulab.spawner.backend``)."""
    inventory: list[Gpu]
    ledger: GpuLedger
    s3: RgwAccounts | None
    """Per-user S3 on Ceph RGW, when storage.s3_endpoint is set."""


@functools.cache
def context() -> Context:
    """Settings, the backend, the GPU inventory and the ledger of this process (read once)."""
    from gpulab.spawner.backend import backend_for

    settings = load_settings()
    read_secret_files(settings)
    backend = backend_for(settings)
    inventory = backend.inventory()
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
    return Context(settings, backend, inventory, ledger, s3)
