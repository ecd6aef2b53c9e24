"""Environment snapshots: a user's own packages saved as an image, and started from later.

``save`` packs what the user installed over the base (``~/.local``, or the own layer of a
server started from a snapshot) into one layer (tar run as the user), pushes it to the
registry on top of the layers it was saved on (cross-repository mounts: nothing is sent
twice), with a config labelled with the Python version, what pip lists in it, the base
and gpulab's version, and tags it ``<repository>/<user>:<name>``; the record keeps the
manifest's digest, so a snapshot is pinned and never changes. ``prepare`` pulls and
unpacks a snapshot's layers once per digest (root-owned, read-only for users) for a
server to start from.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gpulab.hub import homefs
from gpulab.hub.names import IMAGE_REPO, image_repo_name
from gpulab.hub.settings import format_size
from gpulab.hub.workloads.runner import WorkloadError

from .layers import LayerError, pack, unpack
from .registry import OCI_MANIFEST, Registry, RegistryError, sha256_digest
from .registry_process import EmbeddedRegistry
from .store import FAILED, READY, Environment, EnvironmentStore, LayerRecord

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_RULE = "1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LABEL = "org.gpulab."


class SnapshotError(WorkloadError):
    """A request about an environment snapshot that cannot be done (``status``: HTTP)."""


@dataclass(frozen=True)
class Prepared:
    """A snapshot unpacked for a server: what its kernels, terminals and jobs add."""

    environment: Environment
    site_dirs: list[Path]
    """Its layers' site-packages, the newest first."""
    bin_dirs: list[Path]
    userbase: str
    """Where, relative to the home, ``pip install --user`` goes in such a server: its own
    layer, on top of the snapshot (``~/.local`` stays the default environment's)."""


def userbase(ref: str | None) -> str:
    """The user's own layer, relative to their home: ``.local``, or for a server started
    from snapshot ``owner/name``, ``.gpulab/environments/owner/name``."""
    return f".gpulab/environments/{ref}" if ref else ".local"


class EnvironmentManager:
    def __init__(self, settings, engine, names, account: Callable, user_environment):
        self.settings = settings
        self.store = EnvironmentStore(engine)
        self.names = names
        self.account = account
        """``account(user)``: the user's unix account (uid, gid, home)."""
        self.user_environment = user_environment
        self.root = settings.data_path / "environments"
        self._client: Registry | None = None
        self._embedded: EmbeddedRegistry | None = None
        self._tasks: dict[int, asyncio.Task] = {}
        self._unpacking: dict[str, asyncio.Lock] = {}
        self._python: str | None = None

    # -- the registry ----------------------------------------------------------------

    def registry(self) -> Registry:
        """The registry client; the embedded registry is started (or adopted) first when
        none is configured. Blocking: call it in a thread."""
        if self._client is not None:
            return self._client
        s = self.settings.environments
        if s.registry:
            self._client = Registry(s.registry, s.registry_username, s.registry_password)
            return self._client
        embedded = EmbeddedRegistry(self.settings.data_path / "registry", self._embedded_port())
        embedded.start()
        # stopped as the hub ends; a hub that was killed leaves it to its next start
        atexit.register(self.stop_registry)
        embedded.wait_ready()
        self._embedded, self._client = embedded, embedded.client()
        return self._client

    def _embedded_port(self) -> int:
        s = self.settings.environments
        if s.embedded_port:
            return s.embedded_port
        kept = self.settings.data_path / "registry" / "port"
        with contextlib.suppress(OSError, ValueError):
            return int(kept.read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kept.write_text(f"{port}\n")
        return port

    def stop_registry(self) -> None:
        """Stop the embedded registry if this hub started or adopted it."""
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = self._client = None

    async def _registry(self) -> Registry:
        try:
            registry = await asyncio.to_thread(self.registry)
            await asyncio.to_thread(registry.ping)
        except RegistryError as e:
            raise SnapshotError(e.status, str(e)) from None
        return registry

    def repository(self, user: str) -> str:
        own = self.names.name_for(IMAGE_REPO, user, image_repo_name)
        return f"{self.settings.environments.repository}/{own}"

    # -- what users see ----------------------------------------------------------------

    def get(self, user: str, name: str) -> Environment:
        env = self.store.get(user, name)
        if env is None:
            raise SnapshotError(404, f"{user} has no environment named {name}")
        return env

    def visible(self, user: str, groups: list[str], ref: str) -> Environment:
        """The snapshot ``ref`` (``name``, one's own, or ``owner/name``, shared with one of
        ``groups``) as ``user`` may start from it."""
        owner, _, name = ref.rpartition("/")
        owner = owner or user
        env = self.store.get(owner, name)
        if env is None or (owner != user and not set(env.groups) & set(groups)):
            raise SnapshotError(404, f"no environment {ref!r} of yours or shared with you")
        if env.state != READY:
            raise SnapshotError(409, f"environment {env.ref} is {env.state}: {env.message}")
        return env

    def model(self, env: Environment) -> dict:
        return {
            "name": env.name,
            "user": env.user,
            "ref": env.ref,
            "description": env.description,
            "state": env.state,
            "message": env.message,
            "image": env.image,
            "digest": env.digest or None,
            "size": env.size,
            "layers": len(env.layers),
            "parent": env.parent or None,
            "python": env.python or None,
            "base": env.base or None,
            "packages": env.packages,
            "groups": env.groups,
            "created": env.created.isoformat(),
        }

    # -- save --------------------------------------------------------------------------

    async def save(
        self,
        user: str,
        name: str,
        description: str = "",
        groups: list[str] | None = None,
        current: str | None = None,
        member_of: list[str] | None = None,
    ) -> Environment:
        """Start saving ``user``'s environment as ``name``: their own layer over the base,
        or, with ``current`` (the snapshot their server started from), over that one."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SnapshotError(400, f"name must be {NAME_RULE}, got {name!r}")
        if not isinstance(description, str) or len(description) > 500:
            raise SnapshotError(400, "description must be text of at most 500 characters")
        groups = _own_groups(groups or [], member_of or [])
        limit = self.settings.environments.max_per_user
        existing = self.store.get(user, name)
        if existing is not None and existing.state != FAILED:
            raise SnapshotError(
                409,
                f"you already have an environment named {name}: pick another name, or delete it first",
            )
        if existing is None and self.store.count(user) >= limit:
            raise SnapshotError(
                409, f"you have {limit} environments, the most you may keep: delete one first"
            )
        parent = self.visible(user, member_of or [], current) if current else None
        await self._registry()  # unreachable: a 503 now, nothing recorded
        env = self.store.add(
            user, name, description, self.repository(user), parent.ref if parent else "", groups
        )
        if env is None:
            raise SnapshotError(409, f"you already have an environment named {name}")
        self._tasks[env.id] = asyncio.ensure_future(self._save(env, parent))
        return env

    async def _save(self, env: Environment, parent: Environment | None) -> None:
        tmp = self.root / "tmp" / f"{env.id}-{secrets.token_hex(4)}.tar.gz"
        try:
            await self._save_steps(env, parent, tmp)
        except asyncio.CancelledError:
            raise
        except (LayerError, RegistryError, SnapshotError, OSError, subprocess.SubprocessError) as e:
            log.warning("Saving environment %s failed: %s", env.ref, e)
            self.store.update(env.id, state=FAILED, message=f"Failed: {e}")
        except Exception as e:  # noqa: BLE001 -- recorded on the snapshot, never lost in a task
            log.exception("Saving environment %s failed", env.ref)
            self.store.update(env.id, state=FAILED, message=f"Failed: {e}")
        finally:
            tmp.unlink(missing_ok=True)
            self._tasks.pop(env.id, None)

    async def _save_steps(self, env: Environment, parent: Environment | None, tmp: Path) -> None:
        account = await asyncio.to_thread(self.account, env.user)
        own_layer = userbase(parent.ref if parent else None)
        # made (the user's, never through a link) when they installed nothing yet
        await asyncio.to_thread(homefs.make_dirs, account.home, own_layer, account.uid, account.gid)
        source = account.home / own_layer
        own = self.names.name_for(IMAGE_REPO, env.user, image_repo_name)
        prefix = f"opt/gpulab/envs/{own}/{env.name}"
        _private_dir(tmp.parent)

        def packed(size: int) -> None:
            self.store.update(env.id, message=f"Packing your packages: {format_size(size)}")

        self.store.update(env.id, message="Packing your packages")
        layer = await pack(
            source,
            tmp,
            prefix,
            uid=account.uid,
            gid=account.gid,
            max_bytes=self.settings.environments.max_size_bytes,
            progress=packed,
        )
        python = await self.python_version()
        packages, editable = await self._packages(account, source, python)
        registry = await self._registry()
        self.store.update(env.id, message=f"Pushing {format_size(layer.size)} to the registry")
        layers = [
            *(parent.layers if parent else []),
            LayerRecord(layer.digest, layer.diff_id, layer.size, prefix),
        ]
        await asyncio.to_thread(self._push, registry, env, parent, tmp, layers, python, packages)
        note = ""
        if editable:
            note = "; editable installs point into your home and are not in it: " + ", ".join(
                f"{p['name']} ({p.get('editable_project_location', '?')})" for p in editable
            )
        self.store.update(
            env.id,
            state=READY,
            message=f"Saved: {len(packages)} package(s) over {'environment ' + parent.ref if parent else 'the base'}{note}",
            layers=layers,
            packages=packages,
            python=python,
            base=self.base(),
            size=sum(x.size for x in layers),
        )

    def _push(self, registry, env, parent, tmp, layers, python, packages) -> None:
        repo = env.repository
        if parent is not None:
            for x in parent.layers:
                if not registry.blob_exists(repo, x.digest) and not registry.mount_blob(
                    repo, x.digest, parent.repository
                ):
                    raise SnapshotError(503, f"the registry would not share {parent.ref}'s layers")
        registry.push_blob(repo, tmp, layers[-1].digest)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = {
            f"{LABEL}user": env.user,
            f"{LABEL}name": env.name,
            f"{LABEL}python": python,
            f"{LABEL}base": self.base(),
            f"{LABEL}parent": parent.image if parent else "",
            f"{LABEL}version": _version(),
            f"{LABEL}pip-freeze": "\n".join(f"{p['name']}=={p['version']}" for p in packages),
        }
        config = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
            "history": [{"created": created, "created_by": f"gpulab env save {env.name}"}],
        }
        blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = sha256_digest(blob)
        registry.push_blob(repo, blob, config_digest)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(blob)},
            "layers": [{"mediaType": LAYER, "digest": x.digest, "size": x.size} for x in layers],
            "annotations": {"org.opencontainers.image.created": created},
        }
        digest = registry.put_manifest(repo, env.name, manifest, OCI_MANIFEST)
        self.store.update(env.id, digest=digest)

    async def python_version(self) -> str:
        """The user environment's Python, ``3.11``."""
        if self._python is None:
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    str(self.user_environment.python),
                    "-I",
                    "-c",
                    "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            self._python = out.stdout.strip()
        return self._python

    def base(self) -> str:
        """What a snapshot was saved over: the user environment, by its folder and what it
        was made from."""
        return self.user_environment.identity()

    async def _packages(self, account, source: Path, python: str) -> tuple[list[dict], list[dict]]:
        """What pip lists in the user's layer (run as the user: it reads their files), and
        which of those are editable installs."""
        site = source / "lib" / f"python{python}" / "site-packages"
        if not site.is_dir():
            return [], []
        ids = {}
        if os.geteuid() == 0:
            ids = {"user": account.uid, "group": account.gid, "extra_groups": []}
        proc = await asyncio.create_subprocess_exec(
            str(self.user_environment.python), "-I", "-m", "pip", "list", "--path", str(site),
            "--format=json", "--disable-pip-version-check", "--no-input",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL, cwd="/",
            env={"HOME": str(account.home), "PATH": "/usr/bin:/bin"}, **ids,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return [], []
        try:
            listed = json.loads(out[: 4 << 20] or b"[]")
        except ValueError:
            return [], []
        packages = [
            {k: str(p[k])[:200] for k in ("name", "version", "editable_project_location") if k in p}
            for p in listed
            if isinstance(p, dict) and "name" in p and "version" in p
        ][:5000]
        return packages, [p for p in packages if "editable_project_location" in p]

    def share(self, env: Environment, groups: object, member_of: list[str]) -> Environment:
        """Share ``env`` with ``groups`` (its owner's groups) in place of those it had."""
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise SnapshotError(400, "groups must be a list of group names")
        self.store.update(env.id, groups=_own_groups(groups, member_of))
        return self.store.get_by_id(env.id)

    # -- delete ------------------------------------------------------------------------

    async def delete(self, env: Environment) -> None:
        task = self._tasks.get(env.id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if env.digest:
            registry = await self._registry()
            try:
                await asyncio.to_thread(registry.delete_manifest, env.repository, env.digest)
            except RegistryError as e:
                if e.status != 404:
                    raise SnapshotError(e.status, str(e)) from None
        self.store.delete(env.id)

    # -- start from one ----------------------------------------------------------------

    async def prepare(
        self, user: str, groups: list[str], ref: str, report: Callable[[str], None]
    ) -> Prepared:
        """Snapshot ``ref``'s layers unpacked for ``user``'s server (pulled and unpacked
        once per layer digest, then reused)."""
        env = self.visible(user, groups, ref)
        python = await self.python_version()
        if env.python != python:
            raise SnapshotError(
                409,
                f"environment {env.ref} was saved with Python {env.python}; servers here run "
                f"Python {python}: save it again from a server here",
            )
        layers = self.root / "layers"
        _traversable_dir(self.root)
        _traversable_dir(layers)
        dests = []
        for i, layer in enumerate(env.layers):
            dest = layers / layer.digest.removeprefix("sha256:")
            lock = self._unpacking.setdefault(layer.digest, asyncio.Lock())
            async with lock:
                if not dest.is_dir():
                    report(
                        f"Unpacking environment {env.ref}: layer {i + 1} of {len(env.layers)} "
                        f"({format_size(layer.size)})"
                    )
                    await self._pull_and_unpack(env, layer, dest)
            dests.append(dest)
        site = Path("lib") / f"python{python}" / "site-packages"
        return Prepared(
            env,
            [d / site for d in reversed(dests)],
            [d / "bin" for d in reversed(dests)],
            userbase(env.ref),
        )

    async def _pull_and_unpack(self, env: Environment, layer: LayerRecord, dest: Path) -> None:
        registry = await self._registry()
        tmp = self.root / "tmp" / f"pull-{secrets.token_hex(8)}.tar.gz"
        _private_dir(tmp.parent)
        try:
            await asyncio.to_thread(registry.get_blob, env.repository, layer.digest, tmp)
            await asyncio.to_thread(
                unpack, tmp, layer.digest, dest, layer.prefix,
                max_bytes=self.settings.environments.max_size_bytes,
            )  # fmt: skip
        except (RegistryError, LayerError) as e:
            status = e.status if isinstance(e, RegistryError) else 502
            raise SnapshotError(status, f"environment {env.ref}: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)


def _own_groups(groups: list[str], member_of: list[str]) -> list[str]:
    outside = sorted(set(groups) - set(member_of))
    if outside:
        raise SnapshotError(
            403, f"you can only share with groups you are in, not {', '.join(outside)}"
        )
    return sorted(set(groups))


def _version() -> str:
    try:
        return importlib.metadata.version("gpulab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _traversable_dir(path: Path) -> None:
    """A folder users may pass through to what they were told is in it, not list."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(path, 0o711)
