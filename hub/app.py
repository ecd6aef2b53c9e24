"""The hub process's gpulab context: settings, inventory and ledger, made once."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from .inventory import Gpu, discover
from .ledger import GpuLedger
from .settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    inventory: list[Gpu]
    ledger: GpuLedger


@functools.cache
def context() -> Context:
    """Settings, the GPU inventory and the ledger of this process (read once)."""
    settings = load_settings()
    inventory = discover(settings.gpus.ids)
    ledger = GpuLedger(settings.ledger_url, inventory, settings.gpus)
    return Context(settings=settings, inventory=inventory, ledger=ledger)
