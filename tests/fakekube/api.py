"""The HTTP face of the fake: kube-apiserver's REST paths, verbs and wire formats.

Paths: discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``,
``/apis/<group>/<version>``, ``/version``, ``/healthz``); ``/openapi/v2``, a document
with no definitions (so clients' schema validation finds nothing to check; no
``/openapi/v3``); collections and objects under
``/api/v1`` and ``/apis/<group>/<version>``, namespaced
(``.../namespaces/<ns>/<resource>[/<name>[/<subresource>]]``) or across namespaces
(``.../<resource>``, for list and watch); subresources ``status`` and ``log`` (Pods).

Verbs: GET (get, list, ``watch=true``), POST (create, 201), PUT (update), PATCH (merge,
strategic merge, JSON patch), DELETE (delete, deletecollection), with the query
parameters clients send: ``labelSelector``, ``fieldSelector``, ``resourceVersion``,
``resourceVersionMatch``, ``limit``, ``continue``, ``timeoutSeconds``,
``allowWatchBookmarks``, ``gracePeriodSeconds``, ``propagationPolicy``,
``orphanDependents``, ``container`` and ``follow`` (logs). Booleans parse as Go's
``strconv.ParseBool``. Errors are ``Status`` bodies (see ``errors``). Watches stream
newline-delimited ``WatchEvent`` JSON over chunked HTTP until ``timeoutSeconds``
(default 1800 s), the client leaves or a test drops them (``FakeKube.drop_watches``:
the connection is cut mid-stream).

Logs (``pods/<name>/log``, text/plain) are those of the container's running or
terminated instance, else of its last terminated one, as the kubelet chooses (else
400 ``container "c" in pod "p" is waiting to start: <reason>``). With ``follow=true``
they come as a chunked stream: what the instance logged so far, then what it writes
(looked at every 50 ms), ending after its last output once it terminates (or
restarts) or its pod is gone; an instance not running sends its whole log and ends.

Before anything else (routing, faults, handlers), every request is authenticated and
authorized as the apiserver's filters do it (see ``rbac``): 401 for an unknown bearer
token, 403 for what a service account's RBAC bindings do not allow.

Bodies are JSON, or protobuf for the kinds ``protobuf`` decodes (helm's release
Secrets come so); answers are JSON.

Not served: ``dryRun`` (400), ``sendInitialEvents`` (422), server-side apply (415),
``/scale``, ``/binding``, ``/finalize``, the ``/watch/`` path form; the log options
``previous``, ``tailLines``, ``sinceSeconds``, ``sinceTime``, ``timestamps``,
``limitBytes`` are ignored (the whole log is sent, without timestamps).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import errors, protobuf, rbac
from .cluster import KUBERNETES_VERSION
from .faults import Fault, Faults
from .resources import POD, ResourceType, groups, lookup
from .selectors import parse_field_selector, parse_label_selector
from .store import Filter, Watcher

if TYPE_CHECKING:
    from .cluster import Cluster
    from .kubelet import ContainerState, PodWorker

log = logging.getLogger("fakekube")
Obj = dict[str, Any]
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
LOG_POLL = 0.05  # seconds between looks at a followed container log


def parse_bool(value: str | None) -> bool:
    if value in (None, "", "0", "f", "F", "false", "FALSE", "False"):
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    raise errors.bad_request(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def parse_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(
            f'{name}: strconv.ParseInt: parsing "{value}": invalid syntax'
        ) from None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


def _discovery(rt: ResourceType) -> list[Obj]:
    main: Obj = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    out = [main]
    if rt.status_subresource:
        verbs = ["get", "patch", "update"]
        out.append({**main, "name": f"{rt.plural}/status", "singularName": "", "verbs": verbs})
        out[-1].pop("shortNames", None)
    if rt is POD:
        out.append(
            {
                "name": "pods/log",
                "singularName": "",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get"],
            }
        )
    return out


@dataclass
class Target:
    """What a resource request is about, as the apiserver's RequestInfo says."""

    verb: str
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None

    @property
    def resource(self) -> str:
        return f"{self.rt.plural}/{self.sub}" if self.sub else self.rt.plural


class Api:
    def __init__(
        self,
        cluster: Cluster,
        faults: Faults,
        tokens: rbac.Tokens,
        *,
        bookmark_interval: float,
        watch_timeout: int,
    ):
        self.cluster = cluster
        self.store = cluster.store
        self.registry = cluster.registry
        self.faults = faults
        self.tokens = tokens
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.streams: set[Watcher] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def drop_watches(self) -> int:
        """Cut every open watch stream; returns how many there were."""
        dropped = list(self.streams)
        for watcher in dropped:
            watcher.dropped = True
            watcher.close()
        return len(dropped)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self.admit(request)
            target = self.route(request)
            if isinstance(target, web.StreamResponse):
                return target
            wait, fault = self.faults.take(target.verb, target.resource, target.namespace)
            if wait:
                await asyncio.sleep(wait)
            if fault is not None:
                return await self.injected(request, target, fault)
            return await self.serve(request, target)
        except errors.ApiError as e:
            return _json(e.status(), e.code)
        except Exception as e:
            log.exception("fakekube: %s %s failed", request.method, request.path)
            return _json(errors.internal(str(e)).status(), 500)

    def admit(self, request: web.Request) -> rbac.Attributes:
        """Authentication (401) and authorization (403), as the apiserver's filters do
        them ahead of every handler; the RBAC objects are read as they are now."""
        user = rbac.authenticate(request.headers.get("Authorization"), self.tokens, self.store)
        attrs = rbac.attributes(user, request.method, request.path, request.query)
        rbac.authorize(self.store, attrs)
        return attrs

    # -- routing -------------------------------------------------------------------

    def route(self, request: web.Request) -> Target | web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        served = groups()
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok")
        if parts == ["version"]:
            return _json(self.version())
        if parts == ["openapi", "v2"]:
            return self.openapi(request)
        if parts == ["api"]:
            return _json({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            named = [self._group(g) for g in sorted(served) if g]
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": named})
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 2 and parts[0] == "apis" and parts[1] in served and parts[1]:
            if len(parts) == 2:
                return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])})
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.no_such_route()
        kinds = [rt for rt in served.get(group, []) if rt.version == version]
        if not kinds:
            raise errors.no_such_route()
        if not rest:
            return _json(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{group}/{version}" if group else version,
                    "resources": [e for rt in kinds for e in _discovery(rt)],
                }
            )
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (group == "" and rest[2] == "status"):
            namespace, rest = rest[1], rest[2:]
        rt = lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise errors.no_such_route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (rt.namespaced and namespace is None and name is not None) or (
            not rt.namespaced and namespace is not None
        ):
            raise errors.no_such_route()
        if request.method == "GET":
            verb = "get" if name else "watch" if parse_bool(request.query.get("watch")) else "list"
        elif request.method == "DELETE":
            verb = "delete" if name else "deletecollection"
        elif request.method in VERBS and (name is not None) == (request.method != "POST"):
            verb = VERBS[request.method]
        else:
            raise errors.method_not_allowed()
        if "dryRun" in request.query:  # refused rather than written for real
            raise errors.bad_request("fakekube does not implement dryRun")
        if (verb == "create" and rt.namespaced and namespace is None) or (
            sub is not None
            and not (
                sub == "status" and rt.status_subresource and verb in ("get", "update", "patch")
            )
            and not (sub == "log" and rt is POD and verb == "get")
        ):
            raise (
                errors.method_not_allowed() if sub in ("status", "log") else errors.no_such_route()
            )
        return Target(verb, rt, namespace, name, sub)

    def _group(self, group: str) -> Obj:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    def openapi(self, request: web.Request) -> web.Response:
        """An OpenAPI v2 document without definitions, in protobuf when asked (as
        client-go's discovery asks), else JSON: a client that validates manifests
        against it (kubectl, helm) finds no schema for any kind and skips validation."""
        info = {"title": "Kubernetes", "version": f"v{KUBERNETES_VERSION}"}
        if protobuf.OPENAPI_V2 in request.headers.get("Accept", ""):
            return web.Response(
                body=protobuf.openapi_v2_document(info["title"], info["version"]),
                # what kube-openapi answers ("@" is not allowed in a media type)
                content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )
        return _json({"swagger": "2.0", "info": info, "paths": {}, "definitions": {}})

    def version(self) -> Obj:
        major, minor, _ = KUBERNETES_VERSION.lstrip("v").split(".")
        return {
            "major": major,
            "minor": minor,
            "emulationMajor": major,
            "emulationMinor": minor,
            "gitVersion": KUBERNETES_VERSION,
            "gitCommit": "fakekube",
            "gitTreeState": "clean",
            "buildDate": "2025-05-15T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.headers.get("Content-Type", "").split(";")[0].strip() == protobuf.CONTENT_TYPE:
            return protobuf.decode(raw)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise errors.bad_request(
                f"the body of the request could not be decoded as JSON: {e}"
            ) from None

    async def injected(self, request: web.Request, target: Target, fault: Fault) -> web.Response:
        if fault.status == 429:
            return web.Response(
                status=429,
                text="Too many requests, please try again later.\n",
                headers={"Retry-After": str(fault.retry_after)},
            )
        if fault.status == 409:
            name = target.name
            if name is None:
                body = await self._body(request)
                name = ((body or {}).get("metadata") or {}).get("name", "")
            err = errors.conflict(target.rt.plural, name or "", target.rt.group)
        else:
            err = errors.internal("fakekube: injected fault")
        return _json(err.status(), err.code)

    # -- serving -------------------------------------------------------------------

    async def serve(self, request: web.Request, t: Target) -> web.StreamResponse:
        q, ns = request.query, t.namespace or ""
        if t.verb == "watch":
            return await self.watch(request, t.rt, t.namespace)
        if t.verb == "list":
            listed = self.registry.list(
                t.rt,
                t.namespace,
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
                resource_version=q.get("resourceVersion"),
                resource_version_match=q.get("resourceVersionMatch"),
                limit=parse_int(q.get("limit"), "limit") or 0,
                continue_token=q.get("continue"),
            )
            return _json(listed)
        if t.verb == "get":
            if t.sub == "log":
                worker, state, path = self.log_source(ns, t.name, q.get("container"))
                if parse_bool(q.get("follow")):
                    return await self.follow_log(request, worker, state, path)
                return web.Response(text=path.read_text(errors="replace"))
            return _json(self.registry.get(t.rt, ns, t.name))
        if t.verb == "create":
            return _json(self.registry.create(t.rt, ns, await self._body(request)), 201)
        if t.verb == "update":
            body = await self._body(request)
            return _json(self.registry.update(t.rt, ns, t.name, body, subresource=t.sub))
        if t.verb == "patch":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = await self._body(request)
            return _json(
                self.registry.patch(t.rt, ns, t.name, content_type, body, subresource=t.sub)
            )
        options = self._delete_options(q, await self._body(request))
        if t.verb == "delete":
            return _json(self.registry.delete(t.rt, ns, t.name, options))
        return _json(
            self.registry.delete_collection(
                t.rt,
                t.namespace,
                options,
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
            )
        )

    def _delete_options(self, q: Any, body: Any) -> Obj:
        options: Obj = {}
        grace = parse_int(q.get("gracePeriodSeconds"), "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        if q.get("propagationPolicy"):
            options["propagationPolicy"] = q["propagationPolicy"]
        if q.get("orphanDependents"):
            options["orphanDependents"] = parse_bool(q["orphanDependents"])
        if isinstance(body, dict):
            for key in (
                "gracePeriodSeconds",
                "propagationPolicy",
                "orphanDependents",
                "preconditions",
            ):
                if body.get(key) is not None:
                    options[key] = body[key]
        return options

    def log_source(
        self, ns: str, name: str, container: str | None
    ) -> tuple[PodWorker, ContainerState, Path]:
        """The kubelet's worker, the container's state and the log file ``pods/log``
        serves, or the apiserver's / kubelet's error for why there is none."""
        pod = self.registry.get(POD, ns, name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if not container:
            if len(names) != 1:
                message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                if inits:
                    message += f" or one of the init containers: [{' '.join(inits)}]"
                raise errors.bad_request(message)
            container = names[0]
        if container not in names + inits:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        worker = self.cluster.kubelet.worker(ns, name)
        if worker is None and not pod["spec"].get("nodeName"):
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        state = worker.find(container) if worker is not None else None
        # the kubelet's validateContainerLogStatus: the running or terminated instance,
        # else the last terminated one, else why there is none
        path = None
        if state is not None:
            if state.running or state.terminated:
                path = state.log
            elif state.last_state.get("terminated"):
                path = state.last_log
        if worker is None or state is None or path is None:
            reason = "ContainerCreating"
            if state is not None:
                reason = state.state.get("waiting", {}).get("reason") or reason
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        return worker, state, path

    async def follow_log(
        self, request: web.Request, worker: PodWorker, c: ContainerState, path: Path
    ) -> web.StreamResponse:
        """``follow=true``: what the container instance logged so far to ``path``,
        then what it writes, until it terminates (or restarts: a new instance has a log
        of its own) or its pod's worker is gone; an instance not running: its whole
        log."""
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            with path.open("rb") as f:
                while True:
                    # read after looking: output comes before the exit is recorded
                    live = c.running and c.log == path and not worker.task.done()
                    chunk = f.read(1 << 16)
                    if chunk:
                        await resp.write(chunk)
                        continue
                    if not live:
                        break
                    if request.transport is None or request.transport.is_closing():
                        return resp  # the client left
                    await asyncio.sleep(LOG_POLL)
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client left mid-write
        return resp

    # -- watch -----------------------------------------------------------------------

    async def watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        for option, message in (
            ("sendInitialEvents", "fakekube does not implement sendInitialEvents (WatchList)"),
            (
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ),
        ):
            if q.get(option):
                raise errors.invalid_list_options(option, message)
        flt = Filter(
            rt,
            namespace,
            parse_label_selector(q.get("labelSelector")),
            parse_field_selector(q.get("fieldSelector"), rt.allows_field),
        )
        rv = q.get("resourceVersion") or "0"
        if not rv.isdigit():
            raise errors.bad_request(f"invalid resource version: {rv!r}")
        timeout = parse_int(q.get("timeoutSeconds"), "timeoutSeconds") or self.watch_timeout
        bookmarks = parse_bool(q.get("allowWatchBookmarks"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            watcher, first = self.store.watch(flt, int(rv) or None)
        except errors.ApiError as e:
            if e.code != 410:
                raise
            # the watch cache answers a compacted resourceVersion inside the stream
            await resp.prepare(request)
            await resp.write(_dumps({"type": "ERROR", "object": e.status()}) + b"\n")
            await resp.write_eof()
            return resp

        def line(kind: str, obj: Obj) -> bytes:
            return _dumps({"type": kind, "object": obj}) + b"\n"

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval if bookmarks else float("inf")
        self.streams.add(watcher)
        try:
            await resp.prepare(request)
            if first:
                await resp.write(b"".join(line(e.type, e.object) for e in first))
            while (now := loop.time()) < deadline:
                try:
                    async with asyncio.timeout(min(deadline, next_bookmark, now + 1.0) - now):
                        event = await watcher.queue.get()
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    if loop.time() >= next_bookmark:
                        meta = {"resourceVersion": str(self.store.resource_version)}
                        await resp.write(
                            line(
                                "BOOKMARK",
                                {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
                            )
                        )
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if event is None:
                    if watcher.dropped and request.transport is not None:
                        request.transport.close()  # cut mid-stream: no final chunk
                        return resp
                    break
                await resp.write(line(event.type, event.object))
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.streams.discard(watcher)
            self.store.unwatch(watcher)
        return resp
