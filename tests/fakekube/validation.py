"""Validation, as ``pkg/apis/*/validation`` does it, for the mistakes a client is likely
to make: names, required fields, enum values, quantities (extended resources such as
GPUs must be whole and have request == limit), RBAC rules, roleRefs and subjects, and
what an update may change. Each check returns ``FieldError``s with the apiserver's field
paths and wording; the registry turns them into a 422 ``Invalid`` Status. Far from every
rule of the real validation is here: an object this accepts may still be refused by a
cluster. (Checks are written per kind, as the apiserver's are; no OpenAPI schema is
consulted.)
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable
from typing import Any

from .errors import FieldError, forbidden_field, invalid_value, required, unsupported_value
from .quantity import QuantityError, parse_quantity
from .selectors import label_key_problem, label_value_problem, selector_from_object

Obj = dict[str, Any]
Errors = list[FieldError]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
NATIVE_PREFIXES = ("cpu", "memory", "ephemeral-storage", "hugepages-", "storage")
# RBAC objects are named by ``ValidateRBACName`` (a path segment: "system:discovery")
NAME_STYLE = {
    "Namespace": "label",
    "Service": "dns1035",
    "Role": "path",
    "ClusterRole": "path",
    "RoleBinding": "path",
    "ClusterRoleBinding": "path",
}


def name_problem(name: str, style: str) -> str | None:
    """Why ``name`` is not a valid object name of the given style, or None."""
    if style == "path":  # path.IsValidPathSegmentName
        if name in (".", ".."):
            return f"may not be '{name}'"
        bad = [c for c in ("/", "%") if c in name]
        return f"may not contain '{bad[0]}'" if bad else None
    if style == "subdomain":
        if len(name) > 253:
            return "must be no more than 253 characters"
        return None if _SUBDOMAIN.match(name) else SUBDOMAIN_MSG
    if len(name) > 63:
        return "must be no more than 63 characters"
    pattern, msg = (_LABEL, LABEL_MSG) if style == "label" else (_DNS1035, DNS1035_MSG)
    return None if pattern.match(name) else msg


def _duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, "FieldValueDuplicate", f'Duplicate value: "{value}"')


def metadata(kind: str, obj: Obj, namespaced: bool) -> Errors:
    errs: Errors = []
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    elif kind != "Event" and (problem := name_problem(name, NAME_STYLE.get(kind, "subdomain"))):
        errs.append(invalid_value("metadata.name", name, problem))
    if namespaced and not meta.get("namespace"):
        errs.append(required("metadata.namespace"))
    for key, value in (meta.get("labels") or {}).items():
        if problem := label_key_problem(key):
            errs.append(invalid_value("metadata.labels", key, problem))
        if not isinstance(value, str) or (problem := label_value_problem(value)):
            errs.append(invalid_value("metadata.labels", value, problem or "must be a string"))
    return errs


def _quantity(path: str, value: Any, errs: Errors) -> Any:
    try:
        return parse_quantity(value)
    except QuantityError as e:
        errs.append(invalid_value(path, value, str(e)))
        return None


def _resources(path: str, res: Obj, errs: Errors) -> None:
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    parsed = {k: _quantity(f"{path}.limits[{k}]", v, errs) for k, v in limits.items()}
    for name, value in requests.items():
        q = _quantity(f"{path}.requests[{name}]", value, errs)
        if q is None:
            continue
        limit = parsed.get(name)
        if "/" in name and not name.startswith(("kubernetes.io/", *NATIVE_PREFIXES)):
            if q.denominator != 1:
                errs.append(invalid_value(f"{path}.requests[{name}]", value, "must be an integer"))
            if name not in limits:
                errs.append(
                    forbidden_field(
                        f"{path}.limits", "Limit must be set for non overcommitable resources"
                    )
                )
            elif limit is not None and limit != q:
                errs.append(
                    invalid_value(
                        f"{path}.requests[{name}]",
                        value,
                        f"must be equal to {name} limit of {limits[name]}",
                    )
                )
        elif limit is not None and q > limit:
            errs.append(
                invalid_value(
                    f"{path}.requests",
                    value,
                    f"must be less than or equal to {name} limit of {limits[name]}",
                )
            )


def _container(path: str, c: Any, volumes: set[str], names: set[str], errs: Errors) -> None:
    if not isinstance(c, dict):
        errs.append(invalid_value(path, c, "must be an object"))
        return
    name = c.get("name")
    if not name:
        errs.append(required(f"{path}.name"))
    elif problem := name_problem(name, "label"):
        errs.append(invalid_value(f"{path}.name", name, problem))
    elif name in names:
        errs.append(_duplicate(f"{path}.name", name))
    names.add(name)
    if not c.get("image"):
        errs.append(required(f"{path}.image"))
    for i, port in enumerate(c.get("ports") or []):
        number = port.get("containerPort")
        if not isinstance(number, int) or not 0 < number < 65536:
            errs.append(
                invalid_value(
                    f"{path}.ports[{i}].containerPort",
                    number,
                    "must be between 1 and 65535, inclusive",
                )
            )
    for i, env in enumerate(c.get("env") or []):
        if not env.get("name"):
            errs.append(required(f"{path}.env[{i}].name"))
        elif not _ENV_NAME.match(env["name"]):
            errs.append(
                invalid_value(
                    f"{path}.env[{i}].name",
                    env["name"],
                    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                )
            )
    for i, mount in enumerate(c.get("volumeMounts") or []):
        if not mount.get("mountPath"):
            errs.append(required(f"{path}.volumeMounts[{i}].mountPath"))
        if mount.get("name") not in volumes:
            errs.append(
                FieldError(
                    f"{path}.volumeMounts[{i}].name",
                    "FieldValueNotFound",
                    f'Not found: "{mount.get("name")}"',
                )
            )
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        for handler in ("exec", "grpc"):
            if handler in (c.get(kind) or {}):
                errs.append(
                    forbidden_field(
                        f"{path}.{kind}.{handler}", f"fakekube does not implement {handler} probes"
                    )
                )
    _resources(f"{path}.resources", c.get("resources") or {}, errs)


def pod_spec(
    path: str, spec: Any, restart: tuple[str, ...] = ("Always", "OnFailure", "Never")
) -> Errors:
    if not isinstance(spec, dict):
        return [required(path)]
    errs: Errors = []
    volumes: set[str] = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name")
        if not name:
            errs.append(required(f"{path}.volumes[{i}].name"))
        elif name in volumes:
            errs.append(_duplicate(f"{path}.volumes[{i}].name", name))
        volumes.add(name)
        claim = volume.get("persistentVolumeClaim")
        if claim is not None and not claim.get("claimName"):
            errs.append(required(f"{path}.volumes[{i}].persistentVolumeClaim.claimName"))
    if not spec.get("containers"):
        errs.append(required(f"{path}.containers"))
    names: set[str] = set()
    for key in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(key) or []):
            _container(f"{path}.{key}[{i}]", c, volumes, names, errs)
    if spec.get("restartPolicy") not in restart:
        errs.append(
            unsupported_value(f"{path}.restartPolicy", spec.get("restartPolicy"), list(restart))
        )
    return errs


def _template(obj: Obj, restart: tuple[str, ...]) -> Errors:
    template = (obj.get("spec") or {}).get("template") or {}
    return pod_spec("spec.template.spec", template.get("spec"), restart)


def _selector(obj: Obj) -> Errors:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    if selector is None:
        return [required("spec.selector")]
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return [
            invalid_value("spec.selector", selector, "empty selector is invalid for deployment")
        ]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector_from_object(selector).matches(labels):
        return [
            invalid_value(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            )
        ]
    return []


def _non_negative(obj: Obj, *fields: str) -> Errors:
    spec = obj.get("spec") or {}
    return [
        invalid_value(f"spec.{f}", spec[f], "must be greater than or equal to 0")
        for f in fields
        if spec.get(f) is not None and (not isinstance(spec[f], int) or spec[f] < 0)
    ]


def validate_service(obj: Obj) -> Errors:
    errs: Errors = []
    spec = obj.get("spec") or {}
    kind = spec.get("type")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(
            unsupported_value(
                "spec.type", kind, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
            )
        )
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None" and kind != "ExternalName":
        errs.append(required("spec.ports"))
    for i, port in enumerate(ports):
        number = port.get("port")
        if not isinstance(number, int) or not 0 < number < 65536:
            errs.append(
                invalid_value(
                    f"spec.ports[{i}].port", number, "must be between 1 and 65535, inclusive"
                )
            )
    return errs


def validate_secret(obj: Obj) -> Errors:
    errs: Errors = []
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            errs.append(
                invalid_value(f"data[{key}]", "<secret contents redacted>", "illegal base64 data")
            )
    return errs


def validate_pvc(obj: Obj) -> Errors:
    errs: Errors = []
    spec = obj.get("spec") or {}
    modes = spec.get("accessModes") or []
    if not modes:
        errs.append(required("spec.accessModes", "at least 1 access mode is required"))
    supported = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]
    errs += [
        unsupported_value("spec.accessModes", m, supported) for m in modes if m not in supported
    ]
    requests = (spec.get("resources") or {}).get("requests") or {}
    if "storage" not in requests:
        errs.append(required("spec.resources[storage]"))
    else:
        # JSON null decodes to a zero Quantity, which is not positive
        storage = "0" if requests["storage"] is None else requests["storage"]
        q = _quantity("spec.resources[storage]", storage, errs)
        if q is not None and q <= 0:
            errs.append(
                invalid_value("spec.resources[storage]", str(storage), "must be greater than zero")
            )
    if spec.get("volumeMode") not in ("Filesystem", "Block"):
        errs.append(
            unsupported_value("spec.volumeMode", spec.get("volumeMode"), ["Block", "Filesystem"])
        )
    return errs


def validate_pv(obj: Obj) -> Errors:
    errs: Errors = []
    spec = obj.get("spec") or {}
    if (spec.get("capacity") or {}).get("storage") is None:
        errs.append(required("spec.capacity"))
    else:
        _quantity("spec.capacity[storage]", spec["capacity"]["storage"], errs)
    if not spec.get("accessModes"):
        errs.append(required("spec.accessModes"))
    if not any(spec.get(s) for s in ("csi", "hostPath", "local", "nfs", "rbd", "cephfs")):
        errs.append(required("spec", "must specify a volume type"))
    return errs


def validate_deployment(obj: Obj) -> Errors:
    errs = _selector(obj) + _non_negative(obj, "replicas")
    strategy = (obj.get("spec") or {}).get("strategy") or {}
    if strategy.get("type") not in ("RollingUpdate", "Recreate"):
        errs.append(
            unsupported_value(
                "spec.strategy.type", strategy.get("type"), ["Recreate", "RollingUpdate"]
            )
        )
    if (obj.get("spec") or {}).get("paused"):
        errs.append(
            forbidden_field("spec.paused", "fakekube does not implement paused Deployments")
        )
    return errs + _template(obj, ("Always",))


def validate_replicaset(obj: Obj) -> Errors:
    return _selector(obj) + _non_negative(obj, "replicas") + _template(obj, ("Always",))


def validate_storageclass(obj: Obj) -> Errors:
    errs = [] if obj.get("provisioner") else [required("provisioner")]
    if obj.get("volumeBindingMode") != "Immediate":
        errs.append(
            forbidden_field("volumeBindingMode", "fakekube only implements Immediate binding")
        )
    return errs


def validate_event(obj: Obj) -> Errors:
    kind = obj.get("type")
    return (
        []
        if kind in ("Normal", "Warning")
        else [unsupported_value("type", kind, ["Normal", "Warning"])]
    )


# -- rbac.authorization.k8s.io (pkg/apis/rbac/validation) -------------------------------

RBAC_GROUP = "rbac.authorization.k8s.io"


def _go_strings(values: list[Any]) -> str:
    """A []string as field errors print it (``%#v``): ``[]string{"/a", "/b"}``."""
    return "[]string{" + ", ".join(f'"{v}"' for v in values) + "}"


def _policy_rules(obj: Obj, namespaced: bool) -> Errors:
    """``ValidatePolicyRule`` for every rule: verbs; either non-resource URLs (cluster
    roles only, and nothing else) or apiGroups and resources."""
    errs: Errors = []
    for i, rule in enumerate(obj.get("rules") or []):
        path = f"rules[{i}]"
        rule = rule if isinstance(rule, dict) else {}
        if not rule.get("verbs"):
            errs.append(required(f"{path}.verbs", "verbs must contain at least one value"))
        urls = rule.get("nonResourceURLs") or []
        if urls:
            shown = f"Invalid value: {_go_strings(urls)}"
            if namespaced:
                errs.append(
                    FieldError(
                        f"{path}.nonResourceURLs",
                        "FieldValueInvalid",
                        f"{shown}: namespaced rules cannot apply to non-resource URLs",
                    )
                )
            if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
                errs.append(
                    FieldError(
                        f"{path}.nonResourceURLs",
                        "FieldValueInvalid",
                        f"{shown}: rules cannot apply to both regular resources and non-resource URLs",
                    )
                )
            continue
        if not rule.get("apiGroups"):
            errs.append(
                required(f"{path}.apiGroups", "resource rules must supply at least one api group")
            )
        if not rule.get("resources"):
            errs.append(
                required(f"{path}.resources", "resource rules must supply at least one resource")
            )
    return errs


def validate_role(obj: Obj) -> Errors:
    return _policy_rules(obj, True)


def validate_cluster_role(obj: Obj) -> Errors:
    errs = _policy_rules(obj, False)
    if obj.get("aggregationRule") is not None:
        errs.append(
            forbidden_field(
                "aggregationRule", "fakekube does not implement aggregated ClusterRoles"
            )
        )
    return errs


def _subject(subject: Any, namespaced: bool, path: str) -> Errors:
    """``ValidateRoleBindingSubject``."""
    errs: Errors = []
    subject = subject if isinstance(subject, dict) else {}
    name, kind, group = subject.get("name") or "", subject.get("kind"), subject.get("apiGroup")
    if not name:
        errs.append(required(f"{path}.name"))
    if kind == "ServiceAccount":
        if name and (problem := name_problem(name, "subdomain")):
            errs.append(invalid_value(f"{path}.name", name, problem))
        if group:
            errs.append(unsupported_value(f"{path}.apiGroup", group, [""]))
        if not namespaced and not subject.get("namespace"):
            errs.append(required(f"{path}.namespace"))
    elif kind in ("User", "Group"):
        if group != RBAC_GROUP:
            errs.append(unsupported_value(f"{path}.apiGroup", group or "", [RBAC_GROUP]))
    else:
        errs.append(
            unsupported_value(f"{path}.kind", kind or "", ["ServiceAccount", "User", "Group"])
        )
    return errs


def _binding(obj: Obj, namespaced: bool) -> Errors:
    """``ValidateRoleBinding`` / ``ValidateClusterRoleBinding``: a roleRef to a Role
    (RoleBindings only) or a ClusterRole of the RBAC group, and valid subjects."""
    errs: Errors = []
    ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
    if ref.get("apiGroup") != RBAC_GROUP:
        errs.append(unsupported_value("roleRef.apiGroup", ref.get("apiGroup") or "", [RBAC_GROUP]))
    kinds = ["Role", "ClusterRole"] if namespaced else ["ClusterRole"]
    if ref.get("kind") not in kinds:
        errs.append(unsupported_value("roleRef.kind", ref.get("kind") or "", kinds))
    if not ref.get("name"):
        errs.append(required("roleRef.name"))
    elif problem := name_problem(ref["name"], "path"):
        errs.append(invalid_value("roleRef.name", ref["name"], problem))
    for i, subject in enumerate(obj.get("subjects") or []):
        errs += _subject(subject, namespaced, f"subjects[{i}]")
    return errs


def _role_ref_unchanged(old: Obj, new: Obj) -> Errors:
    """A binding's roleRef cannot change (delete and recreate the binding instead)."""
    ref = new.get("roleRef") if isinstance(new.get("roleRef"), dict) else {}
    if ref == old.get("roleRef"):
        return []
    shown = (
        f'rbac.RoleRef{{APIGroup:"{ref.get("apiGroup", "")}", Kind:"{ref.get("kind", "")}", '
        f'Name:"{ref.get("name", "")}"}}'
    )
    return [
        FieldError("roleRef", "FieldValueInvalid", f"Invalid value: {shown}: cannot change roleRef")
    ]


CREATE: dict[str, Callable[[Obj], Errors]] = {
    "Pod": lambda obj: pod_spec("spec", obj.get("spec")),
    "Service": validate_service,
    "Secret": validate_secret,
    "PersistentVolumeClaim": validate_pvc,
    "PersistentVolume": validate_pv,
    "Deployment": validate_deployment,
    "ReplicaSet": validate_replicaset,
    "StorageClass": validate_storageclass,
    "Event": validate_event,
    "Role": validate_role,
    "ClusterRole": validate_cluster_role,
    "RoleBinding": lambda obj: _binding(obj, True),
    "ClusterRoleBinding": lambda obj: _binding(obj, False),
}


# -- updates ----------------------------------------------------------------------


def _strip(value: Any, paths: list[tuple[str, ...]]) -> Any:
    """A deep copy of ``value`` without the given key paths ("*" for every list item)."""
    value = copy.deepcopy(value)

    def drop(node: Any, path: tuple[str, ...]) -> None:
        head, rest = path[0], path[1:]
        if head == "*" and isinstance(node, list):
            for item in node:
                drop(item, rest)
        elif isinstance(node, dict) and head in node:
            if rest:
                drop(node[head], rest)
            else:
                del node[head]

    for p in paths:
        drop(value, p)
    return value


POD_UPDATE_MSG = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def update_pod(old: Obj, new: Obj) -> Errors:
    mutable = [
        ("containers", "*", "image"),
        ("initContainers", "*", "image"),
        ("activeDeadlineSeconds",),
        ("tolerations",),
    ]
    if _strip(old.get("spec"), mutable) != _strip(new.get("spec"), mutable):
        return [forbidden_field("spec", POD_UPDATE_MSG)]
    new_tolerations = new["spec"].get("tolerations") or []
    if any(t not in new_tolerations for t in old["spec"].get("tolerations") or []):
        return [
            forbidden_field(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            )
        ]
    return CREATE["Pod"](new)


def update_pvc(old: Obj, new: Obj) -> Errors:
    bound = (old.get("status") or {}).get("phase") == "Bound"
    mutable = [("resources", "requests"), ("volumeAttributesClassName",)] if bound else []
    if not (old.get("spec") or {}).get("volumeName"):
        mutable.append(("volumeName",))  # the binder fills it in once
    if _strip(old.get("spec"), mutable) != _strip(new.get("spec"), mutable):
        return [
            forbidden_field(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            )
        ]
    errs = validate_pvc(new)
    capacity = ((old.get("status") or {}).get("capacity") or {}).get("storage")
    if bound and not errs and capacity is not None:
        if parse_quantity(new["spec"]["resources"]["requests"]["storage"]) < parse_quantity(
            capacity
        ):
            errs.append(
                forbidden_field(
                    "spec.resources.requests.storage", "field can not be less than status.capacity"
                )
            )
    return errs


def _immutable(old: Obj, new: Obj, *fields: str) -> Errors:
    o, n = old.get("spec") or {}, new.get("spec") or {}
    return [
        invalid_value(f"spec.{f}", n.get(f), "field is immutable")
        for f in fields
        if o.get(f) != n.get(f)
    ]


UPDATE: dict[str, Callable[[Obj, Obj], Errors]] = {
    "Pod": update_pod,
    "PersistentVolumeClaim": update_pvc,
    "Deployment": lambda old, new: _immutable(old, new, "selector") + validate_deployment(new),
    "ReplicaSet": lambda old, new: _immutable(old, new, "selector") + validate_replicaset(new),
    "RoleBinding": lambda old, new: _binding(new, True) + _role_ref_unchanged(old, new),
    "ClusterRoleBinding": lambda old, new: _binding(new, False) + _role_ref_unchanged(old, new),
}
