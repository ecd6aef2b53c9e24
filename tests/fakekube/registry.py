"""The apiserver's generic registry on top of the store: the create / get / list /
update / patch / delete flows of ``k8s.io/apiserver/pkg/registry/generic/registry``.

What it imitates, in order, for a write: decoding checks (kind, apiVersion, name and
namespace against the URL), defaulting, mutating admission, validation (422),
validating admission, the optimistic-concurrency check on ``resourceVersion`` (409
Conflict), existence (404 / 409 AlreadyExists), status-subresource separation (writes
to the main resource keep ``status``, writes to ``/status`` keep everything else),
``metadata.generation`` bumps on spec changes, no-op writes that keep the
resourceVersion, graceful pod deletion (``deletionTimestamp`` +
``deletionGracePeriodSeconds``; unscheduled or finished pods go at once), finalizers
(an object with finalizers is only marked for deletion), and the garbage collector's
``orphan`` / ``foregroundDeletion`` finalizers for ``propagationPolicy``.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import time
import uuid
from typing import Any

from . import admission, clock, defaults, errors, validation
from .patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    json_merge_patch,
    json_patch,
    strategic_merge_patch,
)
from .resources import (
    CONFIGMAP,
    NAMESPACE,
    POD,
    PV,
    PVC,
    SERVICE,
    SERVICEACCOUNT,
    ResourceType,
)
from .selectors import parse_field_selector, parse_label_selector
from .store import Filter, Store

Obj = dict[str, Any]
GC_FINALIZERS = ("orphan", "foregroundDeletion")
SERVER_FIELDS = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "selfLink",
)


def _without_rv(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    out.get("metadata", {}).pop("managedFields", None)
    return out


def _continue_token(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as e:
        raise errors.bad_request(f"continue key is not valid: {e}") from None


class Registry:
    def __init__(self, store: Store, ca_pem: str):
        self.store = store
        self.ca_pem = ca_pem  # the cluster CA, published in every namespace

    # -- decoding --------------------------------------------------------------

    def _decode(self, rt: ResourceType, namespace: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of the request is not a {rt.kind} object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _invalid(self, rt: ResourceType, obj: Obj, errs: list) -> errors.ApiError:
        return errors.invalid(rt.kind, obj["metadata"].get("name", ""), errs, rt.group)

    # -- reads -----------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        return obj

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> Obj:
        flt = Filter(
            rt,
            namespace,
            parse_label_selector(label_selector),
            parse_field_selector(field_selector, rt.allows_field),
        )
        start = ""
        current = self.store.resource_version
        if continue_token:
            if resource_version:
                raise errors.bad_request(
                    "specifying resource version is not allowed when using continue"
                )
            at, start = _parse_continue(continue_token)
            if at < self.store.oldest_resumable:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                )
            snapshot, at_rv = self.store.state_at(rt, at), at
        else:
            if resource_version_match and not resource_version:
                raise errors.invalid_list_options(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            if resource_version_match not in (None, "", "Exact", "NotOlderThan"):
                raise errors.invalid(
                    "ListOptions",
                    "",
                    [
                        errors.unsupported_value(
                            "resourceVersionMatch",
                            resource_version_match,
                            ["Exact", "NotOlderThan"],
                        )
                    ],
                    "meta.k8s.io",
                )
            wanted = 0
            if resource_version:
                try:
                    wanted = int(resource_version)
                except ValueError:
                    raise errors.bad_request(
                        f"invalid resource version: {resource_version!r}"
                    ) from None
            if wanted > current:
                raise errors.too_large_resource_version(wanted, current)
            if resource_version_match == "Exact":
                if wanted == 0:
                    raise errors.invalid_list_options(
                        "resourceVersionMatch",
                        'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                    )
                snapshot, at_rv = self.store.state_at(rt, wanted), wanted
            else:
                snapshot, at_rv = self.store.state_at(rt, current), current
        keys = sorted(k for k, v in snapshot.items() if v is not None and flt.matches(v))
        keys = [k for k in keys if f"{k[1]}/{k[2]}" > start] if start else keys
        items = []
        meta: Obj = {"resourceVersion": str(at_rv)}
        for i, key in enumerate(keys):
            if limit and len(items) == limit:
                meta["continue"] = _continue_token(at_rv, f"{keys[i - 1][1]}/{keys[i - 1][2]}")
                if not label_selector and not field_selector:
                    meta["remainingItemCount"] = len(keys) - i
                break
            item = copy.deepcopy(snapshot[key])
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    # -- create ----------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: Any) -> Obj:
        obj = self._decode(rt, namespace, body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(10):
                meta["name"] = meta["generateName"] + admission.random_suffix()
                if self.store.peek(rt, namespace, meta["name"]) is None:
                    break
        for key in SERVER_FIELDS:
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = clock.rfc3339()
        if rt.has_generation:
            meta["generation"] = 1
        if not meta.get("name"):
            raise self._invalid(
                rt, obj, [errors.required("metadata.name", "name or generateName is required")]
            )
        defaults.apply(rt.kind, obj, creating=True)
        # mutating admission
        admission.namespace_lifecycle(self.store, rt, obj)
        if rt is POD:
            admission.service_account(self.store, obj)
            admission.priority(obj)
        elif rt is PVC:
            admission.default_storage_class(self.store, obj)
            admission.protection_finalizer(obj, "kubernetes.io/pvc-protection")
        elif rt is PV:
            admission.protection_finalizer(obj, "kubernetes.io/pv-protection")
        elif rt is SERVICE:
            self._allocate_service(obj)
        errs = validation.metadata(rt.kind, obj, rt.namespaced)
        errs += validation.CREATE.get(rt.kind, lambda o: [])(obj)
        if errs:
            raise self._invalid(rt, obj, errs)
        if self.store.peek(rt, namespace, meta["name"]) is not None:
            raise errors.already_exists(rt.plural, meta["name"], rt.group)
        created = self.store.add(rt, obj)
        if rt is NAMESPACE:
            self._populate_namespace(meta["name"])
        return created

    def _populate_namespace(self, name: str) -> None:
        """What the serviceaccounts and root-ca-cert-publisher controllers put into every
        new namespace, done at once so a pod may follow its namespace immediately."""
        if self.store.peek(SERVICEACCOUNT, name, "default") is None:
            self.create(SERVICEACCOUNT, name, {"metadata": {"name": "default"}})
        if self.store.peek(CONFIGMAP, name, "kube-root-ca.crt") is None:
            self.create(
                CONFIGMAP,
                name,
                {
                    "metadata": {
                        "name": "kube-root-ca.crt",
                        "annotations": {
                            "kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."
                        },
                    },
                    "data": {"ca.crt": self.ca_pem},
                },
            )

    def _allocate_service(self, svc: Obj) -> None:
        """A cluster IP from 10.96.0.0/12 (node ports are not allocated)."""
        spec = svc["spec"]
        used_ips = {s["spec"].get("clusterIP") for s in self.store.iter(SERVICE)}
        if spec["type"] == "ExternalName":
            return
        if spec.get("clusterIP") in (None, ""):
            hosts = ipaddress.ip_network("10.96.0.0/12").hosts()
            spec["clusterIP"] = next(str(h) for h in hosts if str(h) not in used_ips)
        elif spec["clusterIP"] != "None" and spec["clusterIP"] in used_ips:
            raise self._invalid(
                SERVICE,
                svc,
                [
                    errors.invalid_value(
                        "spec.clusterIPs",
                        [spec["clusterIP"]],
                        f"failed to allocate IP {spec['clusterIP']}: provided IP is already allocated",
                    )
                ],
            )
        spec["clusterIPs"] = [spec["clusterIP"]]

    # -- update / patch --------------------------------------------------------

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        force: bool = False,
    ) -> Obj:
        """PUT. ``force`` skips the resourceVersion precondition (in-process
        controllers write what they just read, on the same event loop)."""
        old = self.store.get(rt, namespace, name)
        if old is None:
            raise errors.not_found(rt.plural, name, rt.group)
        obj = self._decode(rt, namespace, body)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        if (
            not force
            and meta.get("resourceVersion")
            and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(rt.plural, name, rt.group)
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old['metadata']['uid']}",
            )
        for key in SERVER_FIELDS:
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status") or {}
        else:
            new = obj
            if rt.status_subresource:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    new.pop("status")
            if rt is NAMESPACE:
                new.setdefault("spec", {})["finalizers"] = old["spec"].get("finalizers", [])
            if rt is SERVICE:
                for key in ("clusterIP", "clusterIPs"):  # kept when a PUT leaves them out
                    if key in old["spec"]:
                        new.setdefault("spec", {}).setdefault(key, old["spec"][key])
            defaults.apply(rt.kind, new, creating=False)
            errs = validation.metadata(rt.kind, new, rt.namespaced)
            errs += validation.UPDATE.get(
                rt.kind, lambda o, n: validation.CREATE.get(rt.kind, lambda x: [])(n)
            )(old, new)
            if errs:
                raise self._invalid(rt, new, errs)
            if rt is PVC:
                admission.pvc_resize(self.store, old, new)
            if meta.get("deletionTimestamp"):
                added = set(new["metadata"].get("finalizers") or []) - set(
                    old["metadata"].get("finalizers") or []
                )
                if added:
                    raise self._invalid(
                        rt,
                        new,
                        [
                            errors.forbidden_field(
                                "metadata.finalizers",
                                f"no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}",
                            )
                        ],
                    )
            if rt.has_generation and new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if _without_rv(new) == _without_rv(old):
            return old
        updated = self.store.replace(rt, new)
        return self._finalize_if_done(rt, updated)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        old = self.get(rt, namespace, name)
        if content_type == MERGE_PATCH:
            if not isinstance(body, dict):
                raise errors.bad_request("merge patch must be a JSON object")
            new = json_merge_patch(old, body)
        elif content_type == STRATEGIC_MERGE_PATCH:
            new = strategic_merge_patch(old, body)
        elif content_type == JSON_PATCH:
            new = json_patch(old, body)
        elif content_type == APPLY_PATCH:
            raise errors.ApiError(
                415,
                "UnsupportedMediaType",
                "fakekube does not implement server-side apply (application/apply-patch+yaml); "
                "use a merge, strategic merge or JSON patch",
            )
        else:
            raise errors.unsupported_media_type(content_type)
        if not isinstance(new, dict):
            raise errors.bad_request("the patch did not produce an object")
        # a resourceVersion in the patch is a precondition; otherwise the patch applies
        # to the version just read
        patched_rv = (new.get("metadata") or {}).get("resourceVersion")
        if patched_rv != old["metadata"]["resourceVersion"]:
            if patched_rv:
                raise errors.conflict(rt.plural, name, rt.group)
            new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.update(rt, namespace, name, new, subresource=subresource)

    # -- delete ----------------------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: Obj | None = None,
    ) -> Obj:
        options = options or {}
        obj = self.store.get(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if rt is NAMESPACE and name in admission.IMMORTAL_NAMESPACES:
            raise errors.forbidden("namespaces", name, "this namespace may not be deleted")
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        policy = policy or "Background"  # every type served here defaults to it
        if policy not in ("Orphan", "Background", "Foreground"):
            raise errors.invalid(
                "DeleteOptions",
                "",
                [
                    errors.unsupported_value(
                        "propagationPolicy", policy, ["Background", "Foreground", "Orphan"]
                    )
                ],
            )
        first = meta.get("deletionTimestamp") is None
        if first:
            finalizers = [f for f in meta.get("finalizers") or [] if f not in GC_FINALIZERS]
            if policy == "Orphan":
                finalizers.append("orphan")
            elif policy == "Foreground":
                finalizers.append("foregroundDeletion")
        else:
            finalizers = list(meta.get("finalizers") or [])
        grace = self._grace_period(rt, obj, options)
        if rt is NAMESPACE:
            if not first:
                return obj
            meta["deletionTimestamp"] = clock.rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            obj["status"] = {"phase": "Terminating"}
            return self.store.replace(rt, obj)
        if grace > 0 or finalizers:
            if first or grace < meta.get("deletionGracePeriodSeconds", 0):
                meta["deletionTimestamp"] = clock.rfc3339(time.time() + grace)
                meta["deletionGracePeriodSeconds"] = grace
            if finalizers:
                meta["finalizers"] = finalizers
            current = self.store.get(rt, namespace, name)
            if _without_rv(obj) == _without_rv(current):
                return current
            return self._finalize_if_done(rt, self.store.replace(rt, obj))
        gone = self.store.remove(rt, obj)
        return gone if rt.return_deleted_object else self._success(rt, gone)

    def _success(self, rt: ResourceType, obj: Obj) -> Obj:
        details = {
            "name": obj["metadata"]["name"],
            "kind": rt.plural,
            "uid": obj["metadata"]["uid"],
        }
        if rt.group:
            details["group"] = rt.group
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _grace_period(self, rt: ResourceType, obj: Obj, options: Obj) -> int:
        """Pods only: the pod strategy's CheckGracefulDelete."""
        if rt is not POD:
            return 0
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
        if not obj["spec"].get("nodeName") or obj.get("status", {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            return 0
        return max(0, int(grace))

    def _finalize_if_done(self, rt: ResourceType, obj: Obj) -> Obj:
        """Remove an object marked for deletion once nothing holds it any more."""
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers"):
            return obj
        if rt is POD and meta.get("deletionGracePeriodSeconds", 0) > 0:
            return obj
        if rt is NAMESPACE and obj["spec"].get("finalizers"):
            return obj
        return self.store.remove(rt, obj)

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        options: Obj | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        listed = self.list(
            rt, namespace, label_selector=label_selector, field_selector=field_selector
        )
        items = []
        for item in listed["items"]:
            meta = item["metadata"]
            try:
                result = self.delete(rt, meta.get("namespace", ""), meta["name"], options)
            except errors.ApiError as e:
                if e.code == 404:
                    continue
                raise
            if result.get("kind") != "Status":
                result.pop("kind", None)
                result.pop("apiVersion", None)
                items.append(result)
            else:
                items.append(item)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": items,
        }

    def bind_pod(self, namespace: str, name: str, node: str) -> Obj:
        """What the pods/binding subresource does: ``spec.nodeName``, ``PodScheduled=True``."""
        pod = self.get(POD, namespace, name)
        if pod["spec"].get("nodeName"):
            raise errors.conflict(
                "pods/binding",
                name,
                "",
                f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"',
            )
        if pod["metadata"].get("deletionTimestamp"):
            raise errors.conflict(
                "pods/binding",
                name,
                "",
                f"pod {name} is being deleted, cannot be assigned to a host",
            )
        pod["spec"]["nodeName"] = node
        conditions = [
            c
            for c in pod.setdefault("status", {}).get("conditions") or []
            if c["type"] != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": clock.rfc3339(),
            }
        )
        pod["status"]["conditions"] = conditions
        return self.store.replace(POD, pod)

    def finalize_namespace(self, name: str, finalizers: list[str]) -> Obj:
        """What the namespaces/finalize subresource does: set ``spec.finalizers``; a
        terminating namespace with none left is removed."""
        ns = self.get(NAMESPACE, "", name)
        ns["spec"]["finalizers"] = list(finalizers)
        updated = self.store.replace(NAMESPACE, ns)
        return self._finalize_if_done(NAMESPACE, updated)

    # -- convenience for in-process controllers ---------------------------------

    def write_status(self, rt: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.update(
            rt, meta.get("namespace", ""), meta["name"], obj, subresource="status", force=True
        )

    def write(self, rt: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.update(rt, meta.get("namespace", ""), meta["name"], obj, force=True)
