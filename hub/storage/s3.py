"""Per-user S3 on Ceph RGW: an RGW user with its own keys, one bucket, a quota.

Talks to RGW's admin ops API (``/admin/user``, ``/admin/bucket``) with SigV4-signed
requests made with the admin keys, and to S3 itself with the user's own keys (so the
bucket belongs to the user). RGW is the one place the keys live; the hub reads them
back from it when a server starts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import boto3
import botocore.exceptions
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from gpulab.hub.names import (
    BUCKET,
    RGW_USER,
    NameRegistry,
    bucket_name,
    made_for,
    made_for_another,
)

from . import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

REGION = "us-east-1"  # RGW's default zonegroup accepts this name in signatures


@dataclass(frozen=True)
class S3Account:
    user: str
    uid: str
    bucket: str
    endpoint: str
    access_key: str
    secret_key: str
    quota_bytes: int | None
    used_bytes: int = 0
    objects: int = 0

    def env(self) -> dict[str, str]:
        """What boto3, s3fs and the aws CLI read, with no arguments needed."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "S3_ENDPOINT": self.endpoint,
            "GPULAB_S3_BUCKET": self.bucket,
        }

    def as_json(self) -> dict:
        """For the API: everything but the secret."""
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "access_key": self.access_key,
            "quota_bytes": self.quota_bytes,
            "used_bytes": self.used_bytes,
            "objects": self.objects,
        }


class RgwAccounts:
    """Creates and manages users' RGW accounts through the admin ops API."""

    def __init__(
        self,
        endpoint: str,
        admin_access_key: str,
        admin_secret_key: str,
        bucket_prefix: str = "gpulab-",
        uid_prefix: str = "gpulab-",
        quota_bytes: int | None = None,
        timeout: float = 10,
        names: NameRegistry | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self._admin = Credentials(admin_access_key, admin_secret_key)
        self.bucket_prefix = bucket_prefix
        self.uid_prefix = uid_prefix
        self.quota_bytes = quota_bytes
        self.timeout = timeout
        self.names = names or NameRegistry("sqlite://")
        """Who owns each RGW user and bucket name (the hub's registry; else this object's)."""
        self.http = requests.Session()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, user: str) -> threading.Lock:
        """One user's account changes one at a time (two jobs of theirs starting at once
        would otherwise both create the bucket, and one fail with TooManyBuckets)."""
        with self._locks_guard:
            return self._locks.setdefault(user, threading.Lock())

    # -- admin ops -----------------------------------------------------------------

    def _admin_call(self, method: str, path: str, params: dict):
        query = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
        url = f"{self.endpoint}/admin/{path}?{query}"
        data = b""
        request = AWSRequest(method=method, url=url, data=data)
        S3SigV4Auth(self._admin, "s3", REGION).add_auth(request)
        try:
            r = self.http.request(
                method, url, data=data, headers=dict(request.headers), timeout=self.timeout
            )
        except requests.RequestException as e:
            raise StorageUnavailable(
                f"S3 (Ceph RGW) at {self.endpoint} is unreachable: {e}"
            ) from None
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise StorageError(
                f"RGW admin {method} {path} failed: {r.status_code} {_rgw_code(r)}", status=502
            )
        return r.json() if r.content else {}

    def _uid(self, user: str) -> str:
        """The user's RGW uid, by the name recorded for them (``NameConflict`` if taken)."""
        return self.uid_prefix + self.names.name_for(
            RGW_USER, user, lambda u: bucket_name("", u), lambda u: bucket_name("", u, True)
        )

    def _bucket(self, user: str) -> str:
        prefix = self.bucket_prefix
        return self.names.name_for(
            BUCKET, user, lambda u: bucket_name(prefix, u), lambda u: bucket_name(prefix, u, True)
        )

    def _user_info(self, user: str) -> dict | None:
        info = self._admin_call("GET", "user", {"uid": self._uid(user), "format": "json"})
        shown = (info or {}).get("display_name", "")
        if made_for_another(shown, user):
            # made for another hub name (before the registry, or its database was replaced)
            raise StorageError(
                f"the S3 user {self._uid(user)} belongs to another hub user; refusing to "
                f"share it with {user!r}",
                status=409,
            )
        return info

    def ensure(self, user: str) -> S3Account:
        """The user's RGW account and bucket, created (or finished) when missing."""
        with self._lock(user):
            return self._ensure(user)

    def _ensure(self, user: str) -> S3Account:
        uid = self._uid(user)
        info = self._user_info(user)
        if info is None:
            info = self._admin_call(
                "PUT",
                "user",
                {
                    "uid": uid,
                    "display-name": made_for(user),
                    "max-buckets": 1,  # the user's own bucket and no other
                    "format": "json",
                },
            )
            log.info("Created RGW user %s for %s", uid, user)
        if not info.get("keys"):
            info = {
                "keys": self._admin_call(
                    "PUT", "user", {"key": "", "uid": uid, "key-type": "s3", "generate-key": "True"}
                )
            }
        self._set_quota(uid)
        key = info["keys"][-1]
        account = self._account(user, key["access_key"], key["secret_key"])
        self._ensure_bucket(account)
        return self.usage(account)

    def account(self, user: str) -> S3Account | None:
        """The user's account as it is now, or None if it was never created."""
        info = self._user_info(user)
        if info is None or not info.get("keys"):
            return None
        key = info["keys"][-1]
        return self.usage(self._account(user, key["access_key"], key["secret_key"]))

    def rotate_keys(self, user: str) -> S3Account:
        """A new key pair for the user; the old ones stop working at once."""
        with self._lock(user):
            return self._rotate_keys(user)

    def _rotate_keys(self, user: str) -> S3Account:
        uid = self._uid(user)
        info = self._user_info(user)
        if info is None:
            raise StorageError(f"{user} has no S3 account yet", status=404)
        old = [k["access_key"] for k in info.get("keys", [])]
        keys = self._admin_call(
            "PUT", "user", {"key": "", "uid": uid, "key-type": "s3", "generate-key": "True"}
        )
        new = next(k for k in keys if k["access_key"] not in old)
        for access_key in old:
            self._admin_call("DELETE", "user", {"key": "", "uid": uid, "access-key": access_key})
        log.info("Rotated S3 keys of %s", user)
        return self.usage(self._account(user, new["access_key"], new["secret_key"]))

    def usage(self, account: S3Account) -> S3Account:
        stats = self._admin_call("GET", "bucket", {"bucket": account.bucket, "stats": "True"})
        used = objects = 0
        if stats:
            for u in (stats.get("usage") or {}).values():
                used += int(u.get("size_actual", u.get("size", 0)))
                objects += int(u.get("num_objects", 0))
        return S3Account(**{**account.__dict__, "used_bytes": used, "objects": objects})

    def _set_quota(self, uid: str) -> None:
        enabled = self.quota_bytes is not None and self.quota_bytes >= 0
        self._admin_call(
            "PUT",
            "user",
            {
                "quota": "",
                "uid": uid,
                "quota-type": "user",
                "enabled": "true" if enabled else "false",
                "max-size": self.quota_bytes if enabled else -1,
                "max-objects": -1,
            },
        )

    # -- S3 as the user ------------------------------------------------------------

    def _account(self, user: str, access_key: str, secret_key: str) -> S3Account:
        return S3Account(
            user=user,
            uid=self._uid(user),
            bucket=self._bucket(user),
            endpoint=self.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            quota_bytes=self.quota_bytes,
        )

    def client_for(self, account: S3Account):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=account.access_key,
            aws_secret_access_key=account.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def _ensure_bucket(self, account: S3Account) -> None:
        s3 = self.client_for(account)
        try:
            s3.head_bucket(Bucket=account.bucket)
            return
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise StorageError(
                    f"cannot read bucket {account.bucket}: {e}", status=502
                ) from None
        except botocore.exceptions.EndpointConnectionError:
            raise StorageUnavailable(f"S3 (Ceph RGW) at {self.endpoint} is unreachable") from None
        try:
            s3.create_bucket(Bucket=account.bucket)
            log.info("Created bucket %s for %s", account.bucket, account.user)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code != "BucketAlreadyOwnedByYou":
                raise StorageError(
                    f"cannot create bucket {account.bucket}: {code}", status=502
                ) from None


def _rgw_code(r: requests.Response) -> str:
    try:
        return r.json().get("Code", r.reason)
    except ValueError:
        return r.reason
