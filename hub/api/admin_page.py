"""The admins' GPU page, and the nav bar's link to it on every hub page.

- ``/hub/gpulab/admin``: the pool live (Return GPU for a server's GPUs, Cancel for a
  job's, Undeploy for a model's), the queue, the accounts waiting for approval, and GPU
  usage over a period (by user, by group, a chart by day). Its script
  (``templates/gpulab-admin.html``) reads and acts through gpulab's REST API with the
  admin's cookie and xsrf token; admins only (403 for anyone else).
- ``/hub/gpulab/admin/signups``: the accounts waiting for approval, for that page.
- ``pending_signups`` (``JupyterHub.template_vars``, ``templates/page.html``): the
  number the nav bar shows admins beside "GPUs", linking to /hub/authorize.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from jupyterhub.handlers.base import BaseHandler
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.orm import UserInfo
from sqlalchemy import false
from sqlalchemy.exc import SQLAlchemyError
from tornado import web

log = logging.getLogger("gpulab")

REFRESH_SECONDS = 5
"""How often the page reads the pool, the queue and the sign-ups again."""


def waiting_accounts(authenticator) -> list[str] | None:
    """The names of the accounts waiting for an admin's approval, oldest first; None
    where the hub's authenticator takes no sign-ups (not NativeAuthenticator's)."""
    if not isinstance(authenticator, NativeAuthenticator):
        return None
    # the authenticator's own session, as its pages read the accounts (hub/auth.py)
    query = authenticator.db.query(UserInfo.username).filter(UserInfo.is_authorized == false())
    return [name for (name,) in query.order_by(UserInfo.id)]


def pending_signups(user) -> Callable[[], int | None] | None:
    """``JupyterHub.template_vars["gpulab_pending_signups"]``: for a logged-in user, what
    counts the accounts waiting for approval when called; the nav bar calls it for
    admins alone, so other pages read nothing."""
    authenticator = getattr(user, "authenticator", None)
    if authenticator is None:
        return None

    def count() -> int | None:
        try:
            waiting = waiting_accounts(authenticator)
        except SQLAlchemyError as e:  # the page still shows, without the number
            log.warning("gpulab: cannot count the accounts waiting for approval: %s", e)
            authenticator.db.rollback()
            return None
        return None if waiting is None else len(waiting)

    return count


class AdminBase(BaseHandler):
    def require_admin(self) -> None:
        # the scope gpulab's API asks of admins, so the page can do what it shows
        if not self.has_scope("admin:users"):
            raise web.HTTPError(403, "The GPU admin page is for the hub's admins.")


class AdminPage(AdminBase):
    @web.authenticated
    async def get(self):
        self.require_admin()
        html = await self.render_template(
            "gpulab-admin.html",
            signups=waiting_accounts(self.authenticator),
            refresh_seconds=REFRESH_SECONDS,
        )
        self.finish(html)


class SignupsPage(AdminBase):
    """The accounts waiting for approval (``{"pending": [names]}``; ``null`` where the
    authenticator takes no sign-ups), read by the admin page as it refreshes."""

    @web.authenticated
    async def get(self):
        self.require_admin()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"pending": waiting_accounts(self.authenticator)}))


page_handlers = [
    (r"/gpulab/admin", AdminPage),
    (r"/gpulab/admin/signups", SignupsPage),
]
