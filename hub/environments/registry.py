"""A small client of the OCI distribution API (the registry's ``/v2/`` HTTP API).

Enough to push an image made of layers gpulab packs itself (blobs, cross-repository
mounts, a config and a manifest), to pull one back, and to tidy up. Authentication is
basic auth (what distribution's htpasswd auth speaks); token auth is not spoken.

Every failure is a :class:`RegistryError` whose ``status`` is what gpulab's API answers
with; every digest that comes back is checked against the bytes it names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
"""The manifest media types gpulab reads (and asks for, in this order)."""

MANIFEST_LIMIT = 4 << 20
"""The largest manifest read (distribution refuses to store larger ones)."""
ERROR_BODY_LIMIT = 64 << 10
CHUNK = 1 << 20

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
"""A repository name, by the distribution grammar."""
REPOSITORY_LIMIT = 255
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class RegistryError(Exception):
    """A registry call that failed; ``status`` is the HTTP status gpulab answers with:
    503 when the registry cannot be reached, refuses gpulab's credentials or fails (5xx),
    502 for an answer that breaks the protocol, 404 for an unknown manifest or blob."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_repository(repo: str) -> str:
    if not isinstance(repo, str) or len(repo) > REPOSITORY_LIMIT or not REPOSITORY.fullmatch(repo):
        raise ValueError(f"not a repository name: {repo!r}")
    return repo


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


def check_reference(reference: str) -> str:
    """A tag or a digest."""
    if isinstance(reference, str) and (DIGEST.fullmatch(reference) or TAG.fullmatch(reference)):
        return reference
    raise ValueError(f"not a tag or a digest: {reference!r}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One registry at ``url`` (``http(s)://host[:port][/prefix]``), with basic-auth
    credentials when ``username`` is given. ``timeout`` bounds each wait on the
    network (connecting, or the next bytes), not a whole transfer."""

    def __init__(self, url: str, username: str = "", password: str = "", timeout: float = 30):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "give the registry's credentials as username and password, not in its URL"
            )
        self.url = url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self._origin = (parts.scheme, parts.netloc.lower())
        self._http = requests.Session()
        self._http.headers["User-Agent"] = "gpulab"
        self._http.trust_env = False  # no netrc or proxy settings from the environment
        if username:
            self._http.auth = (username, password)

    def __repr__(self) -> str:
        return f"Registry({self.url!r}, username={self.username!r})"

    # -- the API -----------------------------------------------------------------------

    def ping(self) -> None:
        """Whether the registry answers the API with these credentials (or raise)."""
        with self._call("GET", "/v2/", expect=(200,)):
            pass

    def blob_exists(self, repo: str, digest: str) -> bool:
        path = self._blob_path(repo, digest)
        with self._call("HEAD", path, expect=(200, 404)) as r:
            return r.status_code == 200

    def push_blob(self, repo: str, source: Path | bytes, digest: str) -> None:
        """Upload a blob (the bytes, or a file streamed from disk) unless the repository
        has it already. The registry checks ``digest`` against what it received."""
        if self.blob_exists(repo, digest):
            return
        if isinstance(source, bytes) and sha256_digest(source) != digest:
            raise ValueError(f"the bytes given are not {digest}")
        location = self._start_upload(repo)
        put = _with_query(location, {"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        try:
            with contextlib.ExitStack() as stack:
                # a file object goes out in chunks, with its size as Content-Length
                body = (
                    source if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))
                )
                with self._call("PUT", put, expect=(201,), data=body, headers=headers) as r:
                    self._check_digest_header(r, digest)
        except BaseException:
            self._cancel_upload(location)
            raise

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Link a blob that ``from_repo`` has into ``repo`` without uploading it: True
        when mounted; False when the registry offered an upload instead (the source does
        not have it, or the registry does not mount), which is cancelled."""
        check_repository(from_repo)
        path = self._uploads_path(repo)
        query = {"mount": check_digest(digest), "from": from_repo}
        with self._call("POST", _with_query(path, query), expect=(201, 202)) as r:
            if r.status_code == 201:
                return True
            location = self._location(r)
        self._cancel_upload(location)
        return False

    def put_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        """Store ``manifest`` under a tag (or its own digest); return its digest."""
        check_repository(repo)
        check_reference(reference)
        if manifest.get("mediaType", media_type) != media_type:
            raise ValueError(f"the manifest says it is {manifest['mediaType']}, not {media_type}")
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        digest = sha256_digest(body)
        if DIGEST.fullmatch(reference) and reference != digest:
            raise ValueError(f"the manifest's digest is {digest}, not {reference}")
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        with self._call("PUT", path, expect=(201,), data=body, headers=headers) as r:
            self._check_digest_header(r, digest)
        return digest

    def get_manifest(self, repo: str, reference: str) -> tuple[dict, str, str]:
        """The manifest (or index) a tag or digest names: (manifest, digest, media type)."""
        check_repository(repo)
        check_reference(reference)
        path = f"/v2/{repo}/manifests/{reference}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        with self._call("GET", path, expect=(200,), headers=headers) as r:
            body = self._read(r, MANIFEST_LIMIT, "a manifest")
            media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
            said = r.headers.get("Docker-Content-Digest")
        digest = sha256_digest(body)
        if DIGEST.fullmatch(reference) and digest != reference:
            raise self._broken(f"sent a manifest whose digest is {digest} for {repo}@{reference}")
        if said and said != digest:
            raise self._broken(
                f"said the manifest {repo}:{reference} is {said}, but its bytes are {digest}"
            )
        try:
            manifest = json.loads(body)
        except ValueError:
            raise self._broken(f"sent a manifest for {repo}:{reference} that is not JSON") from None
        if not isinstance(manifest, dict):
            raise self._broken(f"sent a manifest for {repo}:{reference} that is not a JSON object")
        if media_type not in MANIFEST_TYPES:
            media_type = manifest.get("mediaType", "")
        if media_type not in MANIFEST_TYPES:
            raise self._broken(
                f"sent {repo}:{reference} as {media_type or 'no media type'}, which gpulab does not read"
            )
        return manifest, digest, media_type

    def get_blob(self, repo: str, digest: str, dest: Path) -> None:
        """Stream a blob to ``dest``, checking its digest on the way. ``dest`` appears
        only once it is whole and verified (a mismatch leaves nothing there)."""
        dest = Path(dest)
        path = self._blob_path(repo, digest)
        with self._call("GET", path, expect=(200,)) as r:
            fd, part = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                hasher = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    for chunk in self._chunks(r):
                        hasher.update(chunk)
                        out.write(chunk)
                got = "sha256:" + hasher.hexdigest()
                if got != digest:
                    raise self._broken(f"sent a blob whose digest is {got} for {repo}@{digest}")
                os.replace(part, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                raise

    def get_blob_bytes(self, repo: str, digest: str, limit: int = 4 << 20) -> bytes:
        """A small blob (an image config) in memory, verified; at most ``limit`` bytes."""
        path = self._blob_path(repo, digest)
        with self._call("GET", path, expect=(200,)) as r:
            body = self._read(r, limit, f"the blob {digest}")
        if sha256_digest(body) != digest:
            raise self._broken(
                f"sent a blob whose digest is {sha256_digest(body)} for {repo}@{digest}"
            )
        return body

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest (and so every tag on it); its blobs stay until the registry
        collects garbage."""
        check_repository(repo)
        path = f"/v2/{repo}/manifests/{check_digest(digest)}"
        with self._call("DELETE", path, expect=(202, 405)) as r:
            if r.status_code == 405:
                raise self._broken("does not allow deleting images (storage.delete.enabled is off)")

    def tags(self, repo: str) -> list[str]:
        """The repository's tags (none for a repository the registry does not know)."""
        check_repository(repo)
        url = f"{self.url}/v2/{repo}/tags/list?n=1000"
        tags: list[str] = []
        while url:
            with self._call("GET", url, expect=(200, 404)) as r:
                if r.status_code == 404:
                    if "NAME_UNKNOWN" in self._error_text(r):
                        return []
                    raise RegistryError(
                        404, f"the image registry at {self.url} has no repository {repo}"
                    )
                page = self._read(r, MANIFEST_LIMIT, "a list of tags")
                following = r.links.get("next", {}).get("url")
                url = self._same_origin(urljoin(r.url, following)) if following else ""
            try:
                listed = json.loads(page).get("tags") or []
            except (ValueError, AttributeError):
                raise self._broken(f"sent a list of tags for {repo} that is not JSON") from None
            if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
                raise self._broken(f"sent a list of tags for {repo} that is not a list of names")
            tags.extend(listed)
        return tags

    # -- HTTP --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(
        self, method: str, path_or_url: str, expect: tuple[int, ...], **kwargs
    ) -> Iterator[requests.Response]:
        """One request, its answer checked: yields a response whose status is in
        ``expect`` (its body still to be read), and raises RegistryError otherwise."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        try:
            r = self._http.request(
                method,
                url,
                stream=True,
                timeout=self.timeout,
                allow_redirects=method in ("GET", "HEAD"),  # to blob storage; never a body
                **kwargs,
            )
        except requests.RequestException as e:
            raise self._unreachable(e) from None
        try:
            if r.status_code not in expect:
                raise self._failure(method, r)
            yield r
        except requests.RequestException as e:
            raise self._unreachable(e) from None
        finally:
            r.close()

    def _failure(self, method: str, r: requests.Response) -> RegistryError:
        where = f"the image registry at {self.url}"
        if r.status_code == 401:
            if not self.username:
                return RegistryError(503, f"{where} asks for credentials, and none are configured")
            if "bearer" in r.headers.get("WWW-Authenticate", "").lower():
                return RegistryError(
                    503, f"{where} asks for token authentication, which gpulab does not speak"
                )
            return RegistryError(
                503,
                f"{where} refused the credentials of its user {self.username!r}: check its username and password",
            )
        if r.status_code == 403:
            return RegistryError(
                503, f"{where} denied its user {self.username!r} access: {self._error_text(r)}"
            )
        if r.status_code == 404:
            return RegistryError(
                404, f"{where} has no {_what(r.request.path_url)}: {self._error_text(r)}"
            )
        if r.status_code >= 500:
            return RegistryError(
                503, f"{where} failed (HTTP {r.status_code}): {self._error_text(r)}"
            )
        what = urlsplit(r.request.path_url).path
        return self._broken(
            f"answered HTTP {r.status_code} to {method} {what}: {self._error_text(r)}"
        )

    def _unreachable(self, e: Exception) -> RegistryError:
        return RegistryError(
            503, f"the image registry at {self.url} cannot be reached: {_reason(e)}"
        )

    def _broken(self, what: str) -> RegistryError:
        return RegistryError(502, f"the image registry at {self.url} {what}")

    def _error_text(self, r: requests.Response) -> str:
        """Distribution's ``{"errors": [{"code", "message"}]}``, said briefly."""
        if r.request.method == "HEAD":
            return r.reason or "no details"
        try:
            body = self._read(r, ERROR_BODY_LIMIT, "an error")
        except RegistryError:
            return r.reason or "no details"
        try:
            errors = json.loads(body)["errors"]
            text = "; ".join(f"{e['code']}: {e.get('message', '')}" for e in errors)
        except (ValueError, KeyError, TypeError):
            text = body.decode(errors="replace").strip()[:200]
        return text or r.reason or "no details"

    def _chunks(self, r: requests.Response) -> Iterator[bytes]:
        try:
            yield from r.iter_content(CHUNK)
        except requests.RequestException as e:
            raise self._unreachable(e) from None

    def _read(self, r: requests.Response, limit: int, what: str) -> bytes:
        body = bytearray()
        for chunk in self._chunks(r):
            body += chunk
            if len(body) > limit:
                raise self._broken(f"sent {what} larger than {limit} bytes")
        return bytes(body)

    def _check_digest_header(self, r: requests.Response, digest: str) -> None:
        said = r.headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise self._broken(f"stored {said} where {digest} was sent")

    # -- uploads -----------------------------------------------------------------------

    def _blob_path(self, repo: str, digest: str) -> str:
        return f"/v2/{check_repository(repo)}/blobs/{check_digest(digest)}"

    def _uploads_path(self, repo: str) -> str:
        return f"/v2/{check_repository(repo)}/blobs/uploads/"

    def _start_upload(self, repo: str) -> str:
        with self._call("POST", self._uploads_path(repo), expect=(202,)) as r:
            return self._location(r)

    def _cancel_upload(self, location: str) -> None:
        """End an upload session (best effort: the registry expires it anyway)."""
        with contextlib.suppress(RegistryError), self._call("DELETE", location, expect=(204, 404)):
            pass

    def _location(self, r: requests.Response) -> str:
        """The absolute URL of an upload session, from an answer's Location header."""
        location = r.headers.get("Location")
        if not location:
            raise self._broken(f"started an upload with no Location (HTTP {r.status_code})")
        return self._same_origin(urljoin(r.url, location))

    def _same_origin(self, url: str) -> str:
        """``url``, if it is on the registry's own host: the credentials go nowhere else."""
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise self._broken(f"sent gpulab on to another host ({parts.scheme}://{parts.netloc})")
        return url


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (upload URLs carry state there)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def _what(path: str) -> str:
    """What a 404 was about, from the request's path."""
    path = urlsplit(path).path
    api = path.partition("/v2/")[2]
    for kind, name in (
        ("/manifests/", "image"),
        ("/blobs/uploads/", "upload"),
        ("/blobs/", "blob"),
    ):
        repo, found, reference = api.partition(kind)
        if found:
            return f"{name} {repo}{'@' if reference.startswith('sha256:') else ':'}{reference}"
    return path


def _reason(e: Exception) -> str:
    """A connection error briefly: urllib3's innermost reason, without its wrappers."""
    if isinstance(e, requests.Timeout):
        return "timed out"
    inner = e.args[0] if e.args and isinstance(e.args[0], Exception) else e
    text = str(getattr(inner, "reason", None) or inner)
    return text.rpartition("): ")[2] or text  # "HTTPConnection(host=..., port=...): ..."
