"""Authentication and RBAC authorization: what kube-apiserver's filters decide about a
request before any handler (or injected fault, see ``faults``) sees it.

Authentication (``k8s.io/apiserver/pkg/authentication/request/bearertoken``): the
``Authorization: Bearer <token>`` header (``bearer`` in any case; another scheme, or an
empty token, counts as no token).

- No token, or the admin token of ``FakeKube.kubeconfig`` (``fakekube``): the cluster
  admin, ``kubernetes-admin`` in group ``system:masters``, which the apiserver's
  privileged-group authorizer allows everything without consulting RBAC. (A real
  apiserver takes a request without credentials as ``system:anonymous``; here such
  requests are the admin, so tests and the in-process helpers set things up freely.)
- A token from ``FakeKube.service_account_token(namespace, name)`` (JWT-shaped, as
  the TokenRequest API's, but only this fake knows it): the ServiceAccount's user
  ``system:serviceaccount:<namespace>:<name>``, in groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<namespace>`` and ``system:authenticated``, for as long as
  the ServiceAccount exists (as the service account authenticator checks on every
  request).
- Any other token: 401, ``reason: Unauthorized``, message ``Unauthorized``.

Request attributes (``k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory``),
from the path alone, before and whatever the fake serves there: ``/api/v1/...``
(group "") and ``/apis/<group>/<version>/...`` are resource requests, every other path
(``/api``, ``/api/v1``, ``/apis/<group>[/<version>]``, ``/version``, ``/healthz``,
``/openapi/v2``, ...) a non-resource one whose verb is the lower-cased HTTP method.
Resource verbs: GET of an object ``get``, of a collection ``list`` (``watch`` when the
``watch`` parameter is set, to anything but ``false``/``0``), POST ``create``, PUT
``update``, PATCH ``patch``, DELETE of an object ``delete``, of a collection
``deletecollection``; ``/watch/`` and ``/proxy/`` paths take their verb from the path.
``namespaces/<ns>/<resource>[/<name>[/<subresource>]]`` gives the namespace; a
namespace itself (``namespaces/<ns>``, ``namespaces/<ns>/status``) is in its own
namespace. A list or watch whose ``fieldSelector`` requires ``metadata.name=<name>`` is
about that name (so ``resourceNames`` can allow watching one object).

Authorization (``plugin/pkg/auth/authorizer/rbac``), evaluated on every request (a
watch: when it starts) against the RBAC objects in the store at that moment: allowed if
a rule allows it in a ClusterRole bound by a ClusterRoleBinding, or, for a request in a
namespace, in a Role or ClusterRole bound by a RoleBinding of that namespace, whose
subjects include the user (``ServiceAccount`` name + namespace, the namespace
defaulting to the binding's; ``User`` by name; ``Group`` by name). A rule allows a
resource request when its ``verbs``, ``apiGroups`` and ``resources`` contain the
request's (or ``*``; ``resources`` name ``<resource>/<subresource>`` for a subresource,
or ``*/<subresource>``) and its ``resourceNames`` are empty or hold the request's name
(so never a nameless list, watch, create or deletecollection); a non-resource request
when its ``verbs`` and ``nonResourceURLs`` match (``*``, the path, or a prefix ending in
``*``). Otherwise 403 with the apiserver's Status (``responsewriters.Forbidden``):
``pods "x" is forbidden: User "system:serviceaccount:ns:sa" cannot delete resource
"pods" in API group "" in the namespace "ns"`` (``pods is forbidden: ...`` for a
collection, ``... at the cluster scope`` outside namespaces, ``cannot get resource
"pods/log"`` for a subresource, ``forbidden: User ... cannot get path "/metrics"`` for
a non-resource path), with ``: RBAC: <errors>`` appended when a matching binding names
a role that does not exist (``role.rbac.authorization.k8s.io "x" not found``).

Bootstrap policy (``plugin/pkg/auth/authorizer/rbac/bootstrappolicy``), made at start:
ClusterRoles ``cluster-admin``, ``system:discovery``, ``system:basic-user`` and
``system:public-info-viewer``, each bound by the ClusterRoleBinding of its name to
``system:masters``, ``system:authenticated`` (both) and ``system:authenticated`` +
``system:unauthenticated``: so a service account may read discovery, ``/version`` and
the health endpoints and nothing else until bound to more.

Not imitated: the rest of the bootstrap roles (``admin``, ``edit``, ``view``,
``system:*`` controller roles), aggregated ClusterRoles (refused, 422), RBAC's
escalation checks (a user who may write Roles or bindings can grant what it does not
hold; the ``escalate``/``bind`` verbs are not consulted), impersonation, the Node
authorizer, SubjectAccessReviews (``kubectl auth can-i``), client certificates, and
token expiry or audiences.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .resources import (
    CLUSTERROLE,
    CLUSTERROLEBINDING,
    RBAC_GROUP,
    ROLE,
    ROLEBINDING,
    SERVICEACCOUNT,
)
from .selectors import parse_field_selector
from .store import Store

Obj = dict[str, Any]
ADMIN_TOKEN = "fakekube"  # the token of FakeKube.kubeconfig
PRIVILEGED_GROUP = "system:masters"
AUTHENTICATED = "system:authenticated"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# RequestInfoFactory's fixed sets
API_PREFIXES = ("api", "apis")
GROUPLESS_PREFIXES = ("api",)
SPECIAL_VERBS = ("proxy", "watch")
SPECIAL_VERBS_NO_SUBRESOURCES = ("proxy",)
NAMESPACE_SUBRESOURCES = ("status", "finalize")
METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class User:
    """``user.Info``: who a request is from."""

    name: str
    groups: tuple[str, ...] = ()

    @property
    def privileged(self) -> bool:
        return PRIVILEGED_GROUP in self.groups


ADMIN = User("kubernetes-admin", (PRIVILEGED_GROUP, AUTHENTICATED))


def service_account_user(namespace: str, name: str) -> User:
    """The user a ServiceAccount's token authenticates as."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
    )


# -- authentication -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Tokens:
    """The service-account tokens this fake has issued (token -> namespace, name); one
    token per account, random for each FakeKube. Shared by the test's thread and the
    server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, tuple[str, str]] = {}
        self._tokens: dict[tuple[str, str], str] = {}

    def issue(self, namespace: str, name: str) -> str:
        """The token of ServiceAccount ``namespace/name`` (the same one every time)."""
        with self._lock:
            token = self._tokens.get((namespace, name))
            if token is None:
                header = {"alg": "RS256", "kid": "fakekube"}
                claims = {
                    "iss": ISSUER,
                    "aud": [ISSUER],
                    "iat": int(time.time()),
                    "sub": f"system:serviceaccount:{namespace}:{name}",
                    "kubernetes.io": {
                        "namespace": namespace,
                        "serviceaccount": {"name": name},
                    },
                }
                token = ".".join(
                    (
                        _b64(json.dumps(header, separators=(",", ":")).encode()),
                        _b64(json.dumps(claims, separators=(",", ":")).encode()),
                        _b64(secrets.token_bytes(32)),
                    )
                )
                self._tokens[(namespace, name)] = token
                self._accounts[token] = (namespace, name)
            return token

    def account(self, token: str) -> tuple[str, str] | None:
        with self._lock:
            return self._accounts.get(token)


def authenticate(header: str | None, tokens: Tokens, store: Store) -> User:
    """The user of a request with this ``Authorization`` header; 401 for a bearer token
    no authenticator accepts."""
    auth = (header or "").strip()
    parts = auth.split(" ", 2)
    if not auth or len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return ADMIN  # no credentials: see the module docstring
    token = parts[1]
    if token == ADMIN_TOKEN:
        return ADMIN
    account = tokens.account(token)
    if account is None or store.peek(SERVICEACCOUNT, *account) is None:
        raise errors.unauthorized()
    return service_account_user(*account)


# -- request attributes -------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """``authorizer.Attributes`` of one request (``RequestInfo`` + its user)."""

    user: User
    verb: str
    path: str
    resource_request: bool = False
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _watch_requested(query: Mapping[str, str]) -> bool:
    """``ListOptions.watch`` as the parameter codec decodes it: set to anything but
    ``0`` or ``false`` (any case)."""
    value = query.get("watch")
    return value is not None and value != "0" and value.lower() != "false"


def _selected_name(query: Mapping[str, str]) -> str:
    """The name a ``fieldSelector`` requires exactly (``metadata.name=x``), if valid."""
    try:
        selector = parse_field_selector(query.get("fieldSelector"), lambda _: True)
    except errors.ApiError:
        return ""  # unparsable: a nameless list, as RequestInfoFactory falls back to
    for req in selector.requirements:
        if req.field == "metadata.name" and not req.negate:
            name = req.value
            ok = name not in (".", "..") and "/" not in name and "%" not in name
            return name if ok else ""
    return ""


def attributes(user: User, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """``RequestInfoFactory.NewRequestInfo`` for this request, with its user."""
    trimmed = path.strip("/")
    parts = trimmed.split("/") if trimmed else []
    plain = Attributes(user, method.lower(), path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return plain
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return plain
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in SPECIAL_VERBS and len(parts) >= 2:
        verb, parts = parts[0], parts[1:]
    else:
        verb = METHOD_VERBS.get(method, "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    sub = parts[2] if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES else ""
    if not name and verb == "get":
        verb = "watch" if _watch_requested(query) else "list"
        name = _selected_name(query)
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, path, True, group, version, namespace, resource, sub, name)


# -- authorization ------------------------------------------------------------------


def _contains(values: Any, wanted: str, wildcard: str = "*") -> bool:
    return isinstance(values, list) and (wildcard in values or wanted in values)


def rule_allows(attrs: Attributes, rule: Obj) -> bool:
    """``RuleAllows``: whether one PolicyRule covers the request."""
    if not _contains(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        for url in rule.get("nonResourceURLs") or []:
            if url in ("*", attrs.path) or (
                url.endswith("*") and attrs.path.startswith(url.rstrip("*"))
            ):
                return True
        return False
    if not _contains(rule.get("apiGroups"), attrs.group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not (
        "*" in resources
        or combined in resources
        or (attrs.subresource and f"*/{attrs.subresource}" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _applies_to(user: User, subjects: Any, namespace: str) -> bool:
    """``appliesTo``: whether one of a binding's subjects is the user."""
    for subject in subjects or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
        if kind == "ServiceAccount":
            sa_namespace = subject.get("namespace") or namespace
            if sa_namespace and user.name == f"system:serviceaccount:{sa_namespace}:{name}":
                return True
    return False


def _role_rules(store: Store, ref: Obj, namespace: str) -> list[Obj]:
    """``GetRoleReferenceRules``: the rules of the role a binding refers to; the
    informer lister's NotFound error when it does not exist."""
    kind, name = ref.get("kind"), ref.get("name", "")
    if kind == "Role":
        role = store.peek(ROLE, namespace, name)
        if role is None:
            raise errors.not_found("role", name, RBAC_GROUP)
    elif kind == "ClusterRole":
        role = store.peek(CLUSTERROLE, "", name)
        if role is None:
            raise errors.not_found("clusterrole", name, RBAC_GROUP)
    else:
        raise errors.bad_request(f'unsupported role reference kind: "{kind}"')
    return [r for r in role.get("rules") or [] if isinstance(r, dict)]


def _bindings(store: Store, namespace: str) -> Iterator[tuple[Obj, str]]:
    """``VisitRulesFor``'s order: every ClusterRoleBinding, then, for a request in a
    namespace, that namespace's RoleBindings (each with the namespace its role is in)."""
    for binding in store.iter(CLUSTERROLEBINDING):
        yield binding, ""
    if namespace:
        for binding in store.iter(ROLEBINDING, namespace):
            yield binding, namespace


def authorize(store: Store, attrs: Attributes) -> None:
    """Allow the request or raise the apiserver's 403."""
    if attrs.user.privileged:
        return
    failures: list[str] = []
    for binding, namespace in _bindings(store, attrs.namespace):
        if not _applies_to(attrs.user, binding.get("subjects"), namespace):
            continue
        try:
            rules = _role_rules(store, binding.get("roleRef") or {}, namespace)
        except errors.ApiError as e:
            if e.message not in failures:
                failures.append(e.message)
            continue
        if any(rule_allows(attrs, rule) for rule in rules):
            return
    reason = ""
    if failures:  # utilerrors.NewAggregate's wording
        joined = ", ".join(failures)
        reason = "RBAC: " + (joined if len(failures) == 1 else f"[{joined}]")
    raise forbidden(attrs, reason)


def forbidden_message(attrs: Attributes) -> str:
    """``responsewriters.forbiddenMessage``."""
    user = attrs.user.name
    if not attrs.resource_request:
        return f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (
        f'User "{user}" cannot {attrs.verb} resource "{resource}" '
        f'in API group "{attrs.group}" {where}'
    )


def forbidden(attrs: Attributes, reason: str = "") -> errors.ApiError:
    """``responsewriters.Forbidden``: ``NewForbidden`` of the request's resource (not
    its subresource) and name, with the message above and the authorizer's reason."""
    message = forbidden_message(attrs) + (f": {reason}" if reason else "")
    resource = attrs.resource if attrs.resource_request else ""
    return errors.forbidden(resource, attrs.name, message, attrs.group)


# -- bootstrap policy ---------------------------------------------------------------

BOOTSTRAP_META = {
    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
    "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
}
HEALTH_URLS = ["/livez", "/readyz", "/healthz", "/version", "/version/"]
BOOTSTRAP_ROLES: dict[str, list[Obj]] = {
    "cluster-admin": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ],
    "system:discovery": [
        {
            "nonResourceURLs": [
                *HEALTH_URLS,
                "/openapi",
                "/openapi/*",
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
            ],
            "verbs": ["get"],
        }
    ],
    "system:basic-user": [
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["selfsubjectreviews"],
            "verbs": ["create"],
        },
    ],
    "system:public-info-viewer": [{"nonResourceURLs": HEALTH_URLS, "verbs": ["get"]}],
}
BOOTSTRAP_BINDINGS: dict[str, list[str]] = {
    "cluster-admin": [PRIVILEGED_GROUP],
    "system:discovery": [AUTHENTICATED],
    "system:basic-user": [AUTHENTICATED],
    "system:public-info-viewer": [AUTHENTICATED, "system:unauthenticated"],
}


def bootstrap(registry: Any) -> None:
    """Create the bootstrap ClusterRoles and ClusterRoleBindings."""
    for name, rules in BOOTSTRAP_ROLES.items():
        registry.create(
            CLUSTERROLE,
            "",
            {"metadata": {"name": name, **BOOTSTRAP_META}, "rules": rules},
        )
    for name, groups in BOOTSTRAP_BINDINGS.items():
        registry.create(
            CLUSTERROLEBINDING,
            "",
            {
                "metadata": {"name": name, **BOOTSTRAP_META},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
                "subjects": [
                    {"apiGroup": RBAC_GROUP, "kind": "Group", "name": group} for group in groups
                ],
            },
        )
