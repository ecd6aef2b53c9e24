"""The kubelet's volume manager, for the volumes a container process can see here.

Imitated: ``configMap``, ``secret`` (``items``, ``optional``, ``defaultMode`` / item
``mode``), ``emptyDir``, and ``projected`` with ``serviceAccountToken`` (the token of the
pod's service account, as the fake's authenticator knows it), ``configMap``, ``secret``
and ``downwardAPI`` (``fieldRef``) sources: the kube-api-access volume the
ServiceAccount admission plugin adds (see ``admission``). Each is a directory of the
pod's sandbox (``volumes/<name>``), its files written when a container starts, and
bind-mounted on each of the container's ``volumeMounts`` (with ``subPath``,
``readOnly``; ``configMap``, ``secret`` and ``projected`` always read-only) in the
container's mount namespace (see ``containers``; as root only).

Claims (``persistentVolumeClaim``) bound to a volume of the CSI hostpath driver
(``hostpath.csi.k8s.io``, Kubernetes' own test driver, which keeps each volume as a
folder on the node) are mounted from ``csi-hostpath/<volumeHandle>`` under the kubelet's
root, so their files outlive the pod and the next pod on the claim sees them; made
owned by root, 0755, or with the pod's ``fsGroup`` as its group, 2775, as the
kubelet's volume ownership does.

Not imitated: claims of other drivers (ceph-csi's RBD images are not this host's to
mount: the path stays the host's own, so tests point such a claim's ``mountPath`` at a
folder of theirs), ``hostPath`` and the other volume types (likewise the host's own
path), the hostpath driver's capacity and deletion of its folders (they go with the
fake), live
updates of a mounted ConfigMap or Secret (files are written at container start), the
``..data`` symlink layout, token expiry and rotation.
"""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .containers import ConfigError, config_object, field_ref
from .resources import PV, PVC

if TYPE_CHECKING:
    from .rbac import Tokens
    from .store import Store

Obj = dict[str, Any]
READ_ONLY = ("configMap", "secret", "projected")


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


def _values(store: Store, kind: str, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
    obj = config_object(store, kind, ns, name, optional)
    if obj is None:
        return None
    if kind == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    values = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    values.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return values


def _write(folder: Path, path: str, data: bytes, mode: int) -> None:
    file = folder / path
    if ".." in Path(path).parts or Path(path).is_absolute():
        raise ConfigError(f"invalid path {path!r} in a volume")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    file.chmod(mode)


def _project(
    store: Store, folder: Path, ns: str, kind: str, ref: Obj, name: str, mode: int
) -> None:
    """The keys of Secret or ConfigMap ``name`` (``kind``) as files, all or ``items``."""
    values = _values(store, kind, ns, name, bool(ref.get("optional")))
    if values is None:
        return
    items = ref.get("items")
    if items is None:
        for key, data in values.items():
            _write(folder, key, data, mode)
        return
    for item in items:
        if item["key"] not in values:
            if ref.get("optional"):
                continue
            raise ConfigError(f"couldn't find key {item['key']} in {kind} {ns}/{name}")
        _write(folder, item["path"], values[item["key"]], item.get("mode", mode))


CSI_HOSTPATH = "hostpath.csi.k8s.io"


class VolumeManager:
    def __init__(self, store: Store, tokens: Tokens, root: Path):
        self.store = store
        self.tokens = tokens
        self.root = root

    def mounts(self, pod: Obj, container: Obj, sandbox: Path) -> list[Mount]:
        """Write the volumes ``container`` mounts and say where they go; ConfigError
        when one cannot be made (a missing ConfigMap, Secret or key)."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        made: dict[str, Path | None] = {}
        out: list[Mount] = []
        for vm in container.get("volumeMounts") or []:
            volume = volumes.get(vm["name"])
            if volume is None:
                raise ConfigError(f'volume "{vm["name"]}" not found in the pod')
            if vm["name"] not in made:
                made[vm["name"]] = self._make(pod, volume, sandbox / "volumes" / vm["name"])
            source = made[vm["name"]]
            if source is None:
                continue  # not imitated: the host's own path
            if vm.get("subPath"):
                source = source / vm["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            read_only = bool(vm.get("readOnly")) or any(k in volume for k in READ_ONLY)
            read_only |= bool((volume.get("persistentVolumeClaim") or {}).get("readOnly"))
            out.append(Mount(source, vm["mountPath"], read_only))
        return out

    def _make(self, pod: Obj, volume: Obj, folder: Path) -> Path | None:
        ns = pod["metadata"]["namespace"]
        if "persistentVolumeClaim" in volume:
            return self._claim(pod, volume["persistentVolumeClaim"]["claimName"])
        if "emptyDir" in volume:
            if not folder.exists():
                folder.mkdir(parents=True)
                folder.chmod(0o777)  # as the kubelet makes it
            return folder
        if not any(k in volume for k in READ_ONLY):
            return None
        fresh = folder.with_name(folder.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        if "configMap" in volume:
            ref = volume["configMap"]
            mode = ref.get("defaultMode", 0o644)
            _project(self.store, fresh, ns, "ConfigMap", ref, ref.get("name", ""), mode)
        if "secret" in volume:
            ref = volume["secret"]
            mode = ref.get("defaultMode", 0o644)
            _project(self.store, fresh, ns, "Secret", ref, ref.get("secretName", ""), mode)
        if "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            for source in volume["projected"].get("sources") or []:
                self._project_source(pod, source, fresh, mode)
        fresh.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(fresh, folder)
        return folder

    def _claim(self, pod: Obj, name: str) -> Path | None:
        claim = self.store.peek(PVC, pod["metadata"]["namespace"], name)
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        pv = self.store.peek(PV, "", volume_name) if volume_name else None
        csi = ((pv or {}).get("spec") or {}).get("csi") or {}
        if csi.get("driver") != CSI_HOSTPATH:
            return None  # not imitated (the kubelet already refused an unbound claim)
        folder = self.root / "csi-hostpath" / csi["volumeHandle"]
        if not folder.exists():
            folder.mkdir(parents=True)
            folder.chmod(0o755)
        group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        if group is not None:
            os.chown(folder, -1, group)
            folder.chmod(0o2775)
        return folder

    def _project_source(self, pod: Obj, source: Obj, folder: Path, mode: int) -> None:
        ns = pod["metadata"]["namespace"]
        if "serviceAccountToken" in source:
            account = pod["spec"].get("serviceAccountName") or "default"
            token = self.tokens.issue(ns, account)
            _write(folder, source["serviceAccountToken"]["path"], token.encode(), mode)
        for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if field in source:
                ref = source[field]
                _project(self.store, folder, ns, kind, ref, ref.get("name", ""), mode)
        for item in (source.get("downwardAPI") or {}).get("items") or []:
            if "fieldRef" not in item:
                raise ConfigError("only fieldRef is supported in a downwardAPI volume here")
            value = field_ref(pod, item["fieldRef"]["fieldPath"])
            _write(folder, item["path"], value.encode(), item.get("mode", mode))
