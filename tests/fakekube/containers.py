"""A container's process, as the kubelet and a CRI runtime would run it, on this host.

What is imitated:
- the environment: the "image" environment (``FakeKube(image_env=...)``; by default the
  environment FakeKube runs in, without ``HOME``), ``HOSTNAME`` (the pod's name or
  ``spec.hostname``), ``envFrom`` (Secrets, ConfigMaps, with ``prefix``) and ``env``
  with ``value`` (``$(VAR)`` expansion, ``$$`` escapes), ``valueFrom`` ``secretKeyRef`` /
  ``configMapKeyRef`` (``optional`` honoured) and ``fieldRef``; a missing Secret,
  ConfigMap or key is a ``CreateContainerConfigError`` with the kubelet's message;
  ``HOME``, when neither the image nor the pod sets it, is the home directory of the
  user the process runs as in this host's passwd ("/" if there is none), as runc
  takes it from the image's; ``PATH``, when the image environment has none,
  containerd's default (``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``);
- ``command`` + ``args`` with ``$(VAR)`` expansion (``args`` alone run as the command
  line, as under an entrypoint such as ``tini --`` that runs its arguments, e.g.
  KubeSpawner's, which sets only ``args``); ``workingDir`` (created if missing,
  as runc does; without one, a fresh directory of the pod's under FakeKube's workdir,
  owned by the container's user); ``securityContext.runAsUser`` / ``runAsGroup`` /
  ``supplementalGroups`` / ``fsGroup`` (a ``runAsUser`` other than FakeKube's own
  needs FakeKube to run as root);
- exit codes: a process killed by signal N exits 128+N (143 for SIGTERM, 137 for
  SIGKILL); a command that cannot be executed is a ``StartError`` with exit code 128
  and runc's message (``exec: "x": executable file not found in $PATH``: the command
  is looked up on the container's PATH, or relative to its working directory when
  it has a slash, before it starts);
- cluster DNS (see ``dns``): when FakeKube runs as root and util-linux's ``unshare``,
  ``setpriv`` and ``mount`` work here (``hosts_wrapper()``), every container process
  gets a private mount namespace in which the cluster's hosts file is bind-mounted on
  ``/etc/hosts``: ``unshare --mount --propagation private -- /bin/sh -c 'mount --bind
  "$0" /etc/hosts && exec "$@"' HOSTS [setpriv --reuid=U --regid=G --groups=...|
  --clear-groups --] COMMAND...``, the mount done as root, then the drop to the
  container's user; each step execs, so the container's pid is the command's.
  Otherwise (not root, no util-linux, no mount namespaces) processes see this host's
  ``/etc/hosts`` and no cluster name resolves;
- stopping: SIGTERM to the process group, SIGKILL after the grace period, and SIGKILL
  to what is left of the group once the main process is gone;
- stdout and stderr as the container's log (``pods/log``);
- volumes (see ``volumes``): ConfigMaps, Secrets, emptyDirs and projected volumes (the
  service account token) are bind-mounted on their ``mountPath`` in the same mount
  namespace, mount points made on this host as runc makes them in a rootfs (and
  removed when the last container using them exits, ``MOUNT_POINTS``), before the
  drop to the container's user; ``KUBERNETES_SERVICE_HOST`` /
  ``KUBERNETES_SERVICE_PORT`` point at the fake's HTTPS port on 127.0.0.1 (not the
  ``kubernetes`` Service's cluster IP, which does not route here), so a pod's
  in-cluster client reaches the API as its service account.

What is not: images (the command runs from the host's filesystem, ``image`` is only
reported back; a container with neither ``command`` nor ``args`` is simulated, see
``kubelet``), claims and host paths (their paths are the host's, see ``volumes``),
``resourceFieldRef`` and Service environment variables (``enableServiceLinks``),
network namespaces (every pod shares 127.0.0.1, see the package docstring on ports),
the kubelet's own ``/etc/hosts`` entries (the pod's own name, ``hostAliases``),
``resolv.conf``, resource limits. ``runAsGroup``, ``supplementalGroups`` and
``fsGroup`` apply only together with a ``runAsUser`` other than FakeKube's own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .resources import CONFIGMAP, SECRET
from .store import Store

logger = logging.getLogger("fakekube")
Obj = dict[str, Any]
# what containerd gives a container whose image sets no PATH
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ConfigError(Exception):
    """Why a container cannot be created (reason CreateContainerConfigError)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are substituted, ``$$``
    becomes ``$``, unknown references stay as written."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def config_object(store: Store, kind: str, ns: str, name: str, optional: bool) -> Obj | None:
    """The Secret or ConfigMap (``kind``) a container refers to: None when it is missing
    and optional, else ConfigError with the kubelet's words."""
    obj = store.peek(SECRET if kind == "Secret" else CONFIGMAP, ns, name)
    if obj is None and not optional:
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    return obj


def _lookup(store: Store, kind: str, ns: str, name: str, key: str | None, optional: bool) -> Any:
    obj = config_object(store, kind, ns, name, optional)
    if obj is None:
        return None
    values = dict(obj.get("data") or {})
    if kind == "Secret":
        values = {k: base64.b64decode(v).decode(errors="replace") for k, v in values.items()}
    if key is None:
        return values
    if key not in values:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {ns}/{name}")
    return values[key]


def field_ref(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldPath: {path}")
    return simple[path]


def container_env(
    store: Store, pod: Obj, container: Obj, base: Mapping[str, str]
) -> dict[str, str]:
    """The process environment for ``container``; ConfigError when a reference fails."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    env["HOSTNAME"] = pod["spec"].get("hostname") or pod["metadata"]["name"]
    for source in container.get("envFrom") or []:
        for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if field in source:
                ref = source[field]
                values = _lookup(store, kind, ns, ref["name"], None, bool(ref.get("optional")))
                env.update({source.get("prefix", "") + k: v for k, v in (values or {}).items()})
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = expand(item.get("value", ""), env)
        elif "fieldRef" in source:
            env[item["name"]] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            value = _lookup(store, kind, ns, ref["name"], ref["key"], bool(ref.get("optional")))
            if value is not None:
                env[item["name"]] = value
    return env


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    return [
        expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])
    ]


def run_as(pod: Obj, container: Obj) -> tuple[int | None, int | None, list[int]]:
    """(uid, gid, supplementary groups) from the pod and container securityContext."""
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    groups = list(pod_sc.get("supplementalGroups") or [])
    if pod_sc.get("fsGroup") is not None:
        groups.append(pod_sc["fsGroup"])
    return (
        sc.get("runAsUser", pod_sc.get("runAsUser")),
        sc.get("runAsGroup", pod_sc.get("runAsGroup")),
        groups,
    )


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or
    one above it), or None when it exists."""
    if os.path.lexists(path):
        return None
    while not os.path.lexists(path.parent):
        path = path.parent
    return path


MOUNT_POINTS = Path("/run/fakekube-mount-points")
"""Which containers use the mount points made on this host, across fake clusters and
processes (a parallel test run has several): a point made here is removed once the last
container that mounts on it has exited, never from under another one."""


@contextlib.contextmanager
def _mount_points_locked():
    MOUNT_POINTS.mkdir(parents=True, exist_ok=True)
    with open(MOUNT_POINTS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _mount_entry(target: str) -> Path:
    return MOUNT_POINTS / hashlib.sha256(target.encode()).hexdigest()[:32]


def hold_mount_points(targets: Sequence[str], holder: str) -> None:
    """``holder`` (a container about to start) mounts on ``targets``; those missing on
    this host are noted as made here."""
    with _mount_points_locked():
        for target in targets:
            entry = _mount_entry(target)
            (entry / "holders").mkdir(parents=True, exist_ok=True)
            top = _first_missing(Path(target))
            if top is not None:
                (entry / "made").write_text(f"{target}\n{top}")
            (entry / "holders" / holder).touch()


def release_mount_points(targets: Sequence[str], holder: str) -> None:
    """``holder`` has exited: the points made here that no container uses any more go."""
    with _mount_points_locked():
        for target in targets:
            entry = _mount_entry(target)
            with contextlib.suppress(FileNotFoundError):
                (entry / "holders" / holder).unlink()
            with contextlib.suppress(FileNotFoundError):
                if any((entry / "holders").iterdir()):
                    continue
            with contextlib.suppress(FileNotFoundError):
                point, top = (entry / "made").read_text().split("\n")
                remove_mount_points([(Path(point), Path(top))])
            shutil.rmtree(entry, ignore_errors=True)


def remove_mount_points(made: Sequence[tuple[Path, Path]]) -> None:
    """Remove the mount points a container's start made on this host, up to the
    outermost folder made for each, as far as they are empty."""
    for point, top in made:
        with contextlib.suppress(OSError):
            if point.is_file() and not point.stat().st_size:
                point.unlink()
                point = point.parent
            while top == point or top in point.parents:
                point.rmdir()
                point = point.parent


def mount_steps(mount: str, mounts: Sequence[Any]) -> list[str]:
    """Shell steps that make each mount point (a file for a file) and bind the volume on
    it, outer paths first; then the read-only ones are remounted read-only."""
    steps = []
    ordered = sorted(mounts, key=lambda m: len(Path(m.target).parts))
    for m in ordered:
        target, source = shlex.quote(m.target), shlex.quote(str(m.source))
        if m.source.is_dir():
            steps.append(f"mkdir -p {target}")
        else:
            steps.append(f'mkdir -p "$(dirname {target})" && touch {target}')
        steps.append(f"{shlex.quote(mount)} --bind {source} {target}")
    for m in ordered:
        if m.read_only:
            steps.append(f"{shlex.quote(mount)} -o remount,bind,ro {shlex.quote(m.target)}")
    return steps


class ExecError(OSError):
    """The command line names nothing this host can execute; the message is runc's
    (Go's ``exec.LookPath``)."""


def find_executable(name: str, path: str, cwd: Path) -> None:
    """Check that ``name`` can be executed as runc looks it up: a name with a slash
    relative to the working directory, any other on ``path`` (the container's PATH);
    ExecError with runc's message when it cannot."""
    if "/" in name:
        file = Path(cwd, name)
        try:
            st = file.stat()
        except OSError as e:
            raise ExecError(f'exec: "{name}": stat {name}: {(e.strerror or "").lower()}') from None
        if stat.S_ISDIR(st.st_mode) or not os.access(file, os.X_OK):
            raise ExecError(f'exec: "{name}": permission denied')
        return
    for folder in path.split(":"):
        file = Path(cwd, folder or ".", name)
        try:
            if stat.S_ISREG(file.stat().st_mode) and os.access(file, os.X_OK):
                return
        except OSError:  # missing, or a folder this user cannot search: the next one
            continue
    raise ExecError(f'exec: "{name}": executable file not found in $PATH')


@functools.cache
def hosts_wrapper() -> tuple[str, str, str] | None:
    """(unshare, setpriv, mount) when container processes can get a mount namespace
    of their own with the cluster's hosts file as ``/etc/hosts``: FakeKube runs as
    root, util-linux is installed and a trial mount works; None otherwise."""
    if os.geteuid() != 0 or not os.path.exists("/bin/sh"):
        return None
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin:/usr/bin:/sbin:/bin"])
    tools = [shutil.which(tool, path=search) for tool in ("unshare", "setpriv", "mount")]
    unshare, setpriv, mount = tools
    if unshare is None or setpriv is None or mount is None:
        return None
    trial = [unshare, "--mount", "--propagation", "private", "--"]
    trial += [mount, "--bind", "/etc/hosts", "/etc/hosts"]
    try:
        subprocess.run(trial, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        logger.warning("fakekube: no mount namespaces for containers, so no cluster DNS: %s", e)
        return None
    return unshare, setpriv, mount


class Process:
    """A started container process; ``wait()`` gives the container exit code."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        log: Path,
        targets: Sequence[str] = (),
        holder: str = "",
    ):
        self.proc = proc
        self.log = log
        self.targets = list(targets)  # where it mounts: released at exit
        self.holder = holder
        self._pumps = [asyncio.ensure_future(self._pump(s)) for s in (proc.stdout, proc.stderr)]

    @classmethod
    async def start(
        cls,
        container: Obj,
        pod: Obj,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        hosts: Path | None = None,
        mounts: Sequence[Any] = (),
    ) -> Process:
        """Run ``container``'s command, with ``hosts`` as its ``/etc/hosts`` and
        ``mounts`` (``volumes.Mount``) bind-mounted where ``hosts_wrapper()`` allows;
        ExecError / OSError / ValueError when it cannot start."""
        uid, gid, groups = run_as(pod, container)
        switch = uid is not None and uid != os.geteuid()
        if switch:
            if os.geteuid() != 0:
                raise PermissionError(f"runAsUser {uid} needs FakeKube to run as root")
            gid = uid if gid is None else gid
        env = dict(env)
        env.setdefault("PATH", DEFAULT_PATH)
        if "HOME" not in env:
            try:
                env["HOME"] = pwd.getpwuid(os.geteuid() if uid is None else uid).pw_dir
            except KeyError:
                env["HOME"] = "/"
        if not cwd.exists():
            cwd.mkdir(parents=True)
            if switch:
                os.chown(cwd, uid, gid)
        argv = command = command_line(container, env)
        find_executable(command[0], env["PATH"], cwd)
        kwargs: dict[str, Any] = {}
        wrapper = hosts_wrapper() if hosts is not None else None
        targets: list[str] = []
        holder = uuid.uuid4().hex
        if wrapper is not None:
            # mount as root in a private mount namespace, then drop to the container's
            # user; every step execs, so the pid stays the container's
            unshare, setpriv, mount = wrapper
            targets = [m.target for m in mounts]
            drop = []
            if switch:
                drop = [setpriv, f"--reuid={uid}", f"--regid={gid}"]
                drop.append(
                    f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
                )
                drop.append("--")
            script = " && ".join(
                [f'{shlex.quote(mount)} --bind "$0" /etc/hosts', *mount_steps(mount, mounts)]
            )
            script += ' && exec "$@"'
            argv = [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]
            argv += [str(hosts), *drop, *command]
        else:
            if mounts:
                logger.warning(
                    "fakekube: no mount namespaces, so container %s sees no volumes",
                    container.get("name"),
                )
            if switch:
                kwargs = {"user": uid, "group": gid, "extra_groups": groups}
        hold_mount_points(targets, holder)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                **kwargs,
            )
        except BaseException:
            release_mount_points(targets, holder)
            raise
        return cls(proc, log, targets, holder)

    async def _pump(self, reader: asyncio.StreamReader | None) -> None:
        assert reader is not None
        with self.log.open("ab") as f:
            while chunk := await reader.read(1 << 16):
                f.write(chunk)
                f.flush()

    async def wait(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        release_mount_points(self.targets, self.holder)
        self.targets = []
        return code if code >= 0 else 128 - code

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    async def stop(self, deadline: Callable[[], float]) -> int:
        """SIGTERM, then SIGKILL once ``time.monotonic()`` passes ``deadline()`` (which
        may move closer while waiting, as a second, shorter delete does)."""
        if self.proc.returncode is None:
            self.signal(signal.SIGTERM)
        while self.proc.returncode is None:
            left = deadline() - time.monotonic()
            if left <= 0:
                self.signal(signal.SIGKILL)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), min(left, 0.1))
        code = await self.wait()
        self.signal(signal.SIGKILL)  # what is left of the process group goes with it
        return code
