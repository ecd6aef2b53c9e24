"""The models a server serves: their versions, how they load, which one answers.

Each model's base path holds numbered version folders (TF Serving's layout). A poller
looks at it every few seconds (and at the model config file, when there is one): a new
version the policy wants is loaded beside the ones serving, and only once it is
available are the versions it replaces unloaded, so requests never find no version.
Labels move to a version once it is available. A version that fails to load is reported
with its error and tried again when its folder changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig
from .errors import FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, OK, UNKNOWN, ServingError
from .monitoring import Metrics

log = logging.getLogger("gpulab.serving")

# TF Serving's ModelVersionStatus states
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass(eq=False)
class Servable:
    """One loaded version: its TensorFlow object and signatures (each load a distinct
    one: batching queues are kept by servable)."""

    name: str
    version: int
    loaded: object
    signature_defs: dict
    """signature name -> SignatureDef proto, as saved (for metadata and input dtypes)."""

    def signature(self, name: str):
        """(the callable, its SignatureDef) for ``name`` ("" is serving_default)."""
        name = name or "serving_default"
        sig = self.signature_defs.get(name)
        fn = self.loaded.signatures.get(name) if sig is not None else None
        if fn is None:
            raise ServingError(FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return fn, sig


@dataclass
class VersionState:
    state: str = START
    error_code: str = OK
    error_message: str = ""
    servable: Servable | None = None
    stamp: float | None = None
    """When the version's folder last changed, at the last load attempt."""


@dataclass
class Model:
    config: ModelConfig
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def available(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.state == AVAILABLE)


class VersionSource(ABC):
    """Where a model's version folders are: a folder, or an S3 prefix."""

    @abstractmethod
    def versions(self) -> dict[int, float]:
        """Version number -> a stamp that changes when the version's files change."""

    @abstractmethod
    def local_path(self, version: int) -> str:
        """A folder on this machine holding the version's SavedModel."""

    def forget(self, version: int) -> None:  # noqa: B027 -- most sources keep no copy
        """The version was unloaded: drop any local copy."""
        return None


class FolderSource(VersionSource):
    def __init__(self, base_path: str):
        self.base = Path(base_path)

    def versions(self) -> dict[int, float]:
        found = {}
        try:
            entries = list(os.scandir(self.base))
        except OSError:
            return {}
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir():
                found[int(entry.name)] = _stamp(Path(entry.path))
        return found

    def local_path(self, version: int) -> str:
        return str(self.base / str(version))


def _stamp(folder: Path) -> float:
    """Newest change time among the version folder and its SavedModel files."""
    stamps = [folder.stat().st_mtime]
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables"):
        try:
            stamps.append((folder / name).stat().st_mtime)
        except OSError:
            pass
    return max(stamps)


class S3Source(VersionSource):
    """Versions under ``s3://bucket/prefix``, read with the credentials in the
    environment (the user's AWS_* variables) and copied to a local cache to load."""

    def __init__(self, url: str, cache: str):
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client("s3")
        self.cache = Path(cache)

    def versions(self) -> dict[int, float]:
        found: dict[int, float] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.prefix) :]
                head, sep, _ = rest.partition("/")
                if sep and head.isdigit():
                    stamp = obj["LastModified"].timestamp()
                    found[int(head)] = max(found.get(int(head), 0.0), stamp)
        return found

    def local_path(self, version: int) -> str:
        target = self.cache / str(version)
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.cache, prefix=f".{version}-"))
        prefix = f"{self.prefix}{version}/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :]
                if not relative or relative.endswith("/") or ".." in relative.split("/"):
                    continue
                dest = staging / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, obj["Key"], str(dest))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return str(target)

    def forget(self, version: int) -> None:
        shutil.rmtree(self.cache / str(version), ignore_errors=True)


def source_for(config: ModelConfig, cache_root: str) -> VersionSource:
    if config.base_path.startswith("s3://"):
        return S3Source(config.base_path, os.path.join(cache_root, config.name))
    return FolderSource(config.base_path)


def load_servable(name: str, version: int, path: str) -> Servable:
    """Load a SavedModel version with TensorFlow, with its saved signature defs."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    folder = Path(path)
    pb = folder / "saved_model.pb"
    if not pb.is_file():
        raise ServingError(
            NOT_FOUND, f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
            f"path: {path}",
        )  # fmt: skip
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs:
        raise ServingError(
            NOT_FOUND, f"Could not find meta graph def matching supplied tags: {{ serve }}. "
            f"The SavedModel at {path} has none tagged serve",
        )  # fmt: skip
    loaded = tf.saved_model.load(str(folder), tags=["serve"])
    return Servable(name, version, loaded, dict(graphs[0].signature_def))


class ModelRegistry:
    """Every model of the server, kept current by ``poll``; safe to read from any thread."""

    def __init__(
        self, configs: list[ModelConfig], cache_root: str = "", metrics: Metrics | None = None
    ):
        self.lock = threading.Lock()
        self.metrics = metrics or Metrics()
        """Where SavedModel loads are counted."""
        self.models: dict[str, Model] = {}
        self.sources: dict[str, VersionSource] = {}
        self.cache_root = cache_root or os.path.join(tempfile.gettempdir(), "gpulab-serving")
        self.configure(configs)

    def configure(self, configs: list[ModelConfig]) -> None:
        """Serve ``configs`` from now on (a model left out is unloaded at the next poll)."""
        with self.lock:
            wanted = {c.name: c for c in configs}
            for name in list(self.models):
                if name not in wanted:
                    self._unload_all(self.models.pop(name))
                    self.sources.pop(name, None)
            for name, config in wanted.items():
                model = self.models.get(name)
                if model is None or model.config.base_path != config.base_path:
                    if model is not None:
                        self._unload_all(model)
                    self.models[name] = Model(config)
                    self.sources[name] = source_for(config, self.cache_root)
                else:
                    model.config = config

    def _unload_all(self, model: Model) -> None:
        for state in model.versions.values():
            state.servable = None
            state.state = END

    # -- polling -------------------------------------------------------------------------

    def poll(self) -> None:
        """Look at every base path once: load what the policy wants, then unload what it
        no longer wants, then move labels."""
        with self.lock:
            work = [(m, self.sources[m.name]) for m in self.models.values()]
        for model, source in work:
            try:
                found = source.versions()
            except Exception as e:  # noqa: BLE001 -- an unreachable store must not stop serving
                log.warning("Cannot list the versions of %s: %s", model.name, e)
                continue
            if not found:
                if not model.versions:
                    log.warning(
                        "No versions of servable %s found under base path %s",
                        model.name,
                        model.config.base_path,
                    )
                continue
            aspired = model.config.aspired(list(found))
            for version in aspired:
                self._load_if_needed(model, source, version, found[version])
            self._retire(model, source, aspired)
            self._move_labels(model)

    def _load_if_needed(self, model: Model, source, version: int, stamp: float) -> None:
        state = model.versions.get(version)
        if state is not None and state.state == AVAILABLE:
            return
        if state is not None and state.state == END and state.error_code != OK:
            if state.stamp == stamp:
                return  # failed to load before, and unchanged since
        state = VersionState(LOADING, stamp=stamp)
        with self.lock:
            model.versions[version] = state
        log.info("Loading servable version {name: %s version: %d}", model.name, version)
        path = f"{model.config.base_path.rstrip('/')}/{version}"
        t0 = time.perf_counter()
        try:
            servable = load_servable(model.name, version, source.local_path(version))
        except Exception as e:  # noqa: BLE001 -- reported in the model's status
            self.metrics.load_attempts.add(path, "fail")
            message = e.message if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
            code = e.code if isinstance(e, ServingError) else UNKNOWN
            log.error("Loading servable {name: %s version: %d} failed: %s", model.name, version,
                      message)  # fmt: skip
            with self.lock:
                state.state, state.error_code, state.error_message = END, code, message
            return
        self.metrics.load_attempts.add(path, "success")
        self.metrics.load_latency.add(path, by=round((time.perf_counter() - t0) * 1e6))
        with self.lock:
            state.servable, state.state = servable, AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name,
                 version)  # fmt: skip

    def _retire(self, model: Model, source, aspired: list[int]) -> None:
        """Unload the versions no longer aspired, once an aspired one is available."""
        if not any(model.versions.get(v, VersionState()).state == AVAILABLE for v in aspired):
            return  # keep serving what there is
        with self.lock:
            for version, state in model.versions.items():
                if version in aspired or state.state != AVAILABLE:
                    continue
                if version in model.labels.values() and version in model.config.labels.values():
                    continue  # a label still names it
                state.state, state.servable = END, None
                log.info("Unloaded servable version {name: %s version: %d}", model.name, version)
                source.forget(version)

    def _move_labels(self, model: Model) -> None:
        with self.lock:
            labels = {}
            for label, version in model.config.labels.items():
                if model.versions.get(version, VersionState()).state == AVAILABLE:
                    labels[label] = version
                elif label in model.labels:
                    labels[label] = model.labels[label]  # until the new one is available
            model.labels = labels

    # -- requests --------------------------------------------------------------------------

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version a request names (newest available when it names none), or TF
        Serving's error."""
        if not name:
            raise ServingError(INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self.lock:
            model = self.models.get(name)
            if label is not None:
                if model is None or label not in model.labels:
                    raise ServingError(
                        INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
                    )
                version = model.labels[label]
            if model is not None:
                if version is None:
                    ready = model.available()
                    if ready:
                        return model.versions[ready[-1]].servable
                else:
                    state = model.versions.get(version)
                    if state is not None and state.state == AVAILABLE:
                        return state.servable
        wanted = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise ServingError(NOT_FOUND, f"Servable not found for request: {wanted}")

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        """(version, state) of a model's versions, as GetModelStatus reports them."""
        if not name:
            raise ServingError(INVALID_ARGUMENT, "Missing model name in request.")
        with self.lock:
            model = self.models.get(name)
            versions = dict(model.versions) if model is not None else {}
        if version is not None:
            if version not in versions:
                raise ServingError(NOT_FOUND, f"Could not find version {version} of model {name}")
            return [(version, versions[version])]
        if not versions:
            raise ServingError(NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(versions.items(), reverse=True)  # newest first, as TF Serving
