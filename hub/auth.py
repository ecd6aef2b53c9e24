"""Accounts with passwords, sign-up and admin approval; the first admin is bootstrapped.

Built on NativeAuthenticator: users sign up at /hub/signup, an admin approves them at
/hub/authorize (unless open sign-up is on, or the admin added the user in the hub
first), passwords are stored bcrypt-hashed in the
hub database. On first start the first admin account is created with the password
from the settings (``hub.admin_password`` / ``GPULAB_HUB__ADMIN_PASSWORD``) or a
generated one, printed once.

Passwords need ``minimum_password_length`` characters (8) and must not be on
NativeAuthenticator's list of common passwords. Approving, un-approving and discarding
an account take a POST from the admin's /hub/authorize page with JupyterHub's xsrf
token: a GET (an image or a link on another site) changes nothing.

The accounts (NativeAuthenticator's ``users_info`` table) are read and written through
the authenticator's own database session on the hub's database (``db``), never the
hub's: each write commits there, so the hub sees it at once.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace

import bcrypt
from jinja2 import ChoiceLoader, FileSystemLoader
from jupyterhub import orm
from jupyterhub.scopes import needs_scope
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import AuthorizationAreaHandler as NativeAuthorizationArea
from nativeauthenticator.handlers import LocalBase
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.handlers import SignUpHandler as NativeSignUpHandler
from nativeauthenticator.orm import UserInfo
from sqlalchemy.orm import Session
from tornado import web
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode, default

from .authapi import GpulabApiMixin

TEMPLATES = Path(__file__).with_name("templates")


class OwnSession(Session):
    """The authenticator's session: a commit that fails is rolled back at once, as the
    hub's handlers roll back their session, so one error does not leave every later
    login facing a session that waits for a rollback."""

    def commit(self) -> None:
        try:
            super().commit()
        except Exception:
            self.rollback()
            raise


class GpulabAuthenticator(GpulabApiMixin, NativeAuthenticator):
    bootstrap_admin = Unicode(
        "", config=True, help="Admin account created with a password on first start."
    ).tag(config=True)
    bootstrap_password = Unicode(
        "", config=True, help="Its password; empty: generate one and print it once."
    ).tag(config=True)

    @default("db")
    def _own_db(self) -> Session:
        """A session of its own on the hub's database (JupyterHub deprecates the one it
        shares with authenticators). It makes NativeAuthenticator's table if missing."""
        hub = self.parent
        factory = orm.new_session_factory(hub.db_url, **hub.db_kwargs)
        return OwnSession(**factory.kw)

    @default("minimum_password_length")
    def _default_minimum_password_length(self) -> int:
        return 8

    @default("check_common_password")
    def _default_check_common_password(self) -> bool:
        return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bootstrap_admin:
            self._bootstrap()

    def password_problem(self, password: str) -> str | None:
        """Why ``password`` is refused, in words for the person choosing it; None if fine."""
        if len(password) < self.minimum_password_length:
            return f"a password needs at least {self.minimum_password_length} characters"
        if self.check_common_password and self.is_password_common(password):
            return "this password is too common (it is on a list of leaked passwords)"
        return None

    def is_password_strong(self, password: str) -> bool:
        # one rule for sign-up, password changes and the bootstrap admin
        return self.password_problem(password) is None

    def _bootstrap(self) -> None:
        problem = self.bootstrap_password and self.password_problem(self.bootstrap_password)
        if problem:
            # a clear line in the hub's log, not a traceback: the operator fixes a setting
            self.log.critical(
                "gpulab: hub.admin_password (GPULAB_HUB__ADMIN_PASSWORD) is refused: %s. "
                "Set a stronger one, or leave it empty for a generated password.",
                problem,
            )
            raise SystemExit(1)
        name = self.normalize_username(self.bootstrap_admin)
        if UserInfo.find(self.db, name) is not None:
            return
        password = self.bootstrap_password or secrets.token_urlsafe(12)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
        self.db.commit()
        if self.bootstrap_password:
            self.log.warning("gpulab: created admin account %r with the configured password", name)
        else:
            banner = "=" * 72
            self.log.warning(
                "\n%s\ngpulab: created admin account %r with password:\n\n    %s\n\n"
                "It is shown only this once. Log in and change it at /hub/change-password.\n%s",
                banner,
                name,
                password,
                banner,
            )

    def get_authed_users(self):
        # users an admin added in the hub (admin panel or API) may sign up and log in at once
        added = {name for (name,) in self.db.query(orm.User.name)}
        return super().get_authed_users() | added

    def get_handlers(self, app):
        handlers = super().get_handlers(app)
        ours = {
            "/login": LoginHandler,
            "/signup": SignUpHandler,
            "/authorize": AuthorizationAreaHandler,
            r"/authorize/([^/]*)": ApprovalHandler,
            r"/discard/([^/]*)": DiscardHandler,
        }
        return [(path, ours.get(path, h)) for path, h in handlers]


class TemplatesFirst(LocalBase):
    """Renders gpulab's versions of NativeAuthenticator's pages (hub/templates/) first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        env = self.settings["jinja2_env"]
        if not getattr(env, "gpulab_templates", False):
            env.loader = ChoiceLoader([FileSystemLoader(str(TEMPLATES)), env.loader])
            env.gpulab_templates = True


class AuthorizationAreaHandler(TemplatesFirst, NativeAuthorizationArea):
    """/hub/authorize, whose buttons are forms that POST with the xsrf token."""

    @needs_scope("admin:users")
    async def get(self) -> None:
        # the accounts as the authenticator's session has them (not the hub's session)
        html = await self.render_template(
            "authorization-area.html",
            ask_email=self.authenticator.ask_email_on_signup,
            users=UserInfo.all_users(self.authenticator.db),
        )
        self.finish(html)


class PostOnly(TemplatesFirst):
    """A page that changes an account: it acts on a POST only, which JupyterHub checks for
    its xsrf token; a GET (another site's image or link, followed by an admin's browser)
    is answered 405 and changes nothing."""

    def get(self, name: str) -> None:
        error = web.HTTPError(
            405, "Accounts are approved and discarded with the buttons on /hub/authorize."
        )
        error.headers = {"Allow": "POST"}  # JupyterHub's error page keeps these headers
        raise error

    def account(self, name: str) -> UserInfo:
        info = self.authenticator.get_user(name)
        if info is None:
            raise web.HTTPError(404, f"No account {name!r} has signed up.")
        return info

    def back_to_list(self, info: UserInfo) -> None:
        self.redirect(self.hub.base_url + "authorize#" + url_escape(info.username, plus=False))


class ApprovalHandler(PostOnly):
    """POST /hub/authorize/<name> with ``action=approve`` or ``action=unapprove``."""

    @needs_scope("admin:users")
    async def post(self, name: str) -> None:
        action = self.get_body_argument("action", "")
        if action not in ("approve", "unapprove"):
            raise web.HTTPError(400, "action must be approve or unapprove.")
        info = self.account(name)
        info.is_authorized = action == "approve"
        self.authenticator.db.commit()  # the account is the authenticator's session's
        self.back_to_list(info)


class DiscardHandler(PostOnly):
    """POST /hub/discard/<name>: deletes an account that is waiting for approval."""

    @needs_scope("admin:users")
    async def post(self, name: str) -> None:
        info = self.account(name)
        if info.is_authorized:
            raise web.HTTPError(409, f"{info.username} is approved: un-approve them first.")
        user = self.users.get(info.username)
        if user is not None and any(s.active for s in user.spawners.values()):
            raise web.HTTPError(409, f"{info.username} has a server running: stop it first.")
        # NativeAuthenticator's delete_user wants something with a name: a pending account
        # need not be a hub user
        self.authenticator.delete_user(user or SimpleNamespace(name=info.username))
        if user is not None:
            self.users.delete(info.username)
        self.redirect(self.hub.base_url + "authorize")


class SignUpHandler(NativeSignUpHandler):
    """Says why a sign-up was refused (with a 400), and tells users who may log in at once
    (invited, or open sign-up) that they may."""

    async def post(self) -> None:
        password = self.get_body_argument("signup_password", "", strip=False)
        problem = self.authenticator.password_problem(password)
        if not self.authenticator.enable_signup or problem is None:
            await super().post()
            return
        self.set_status(400)
        html = await self.render_template(
            "signup.html",
            ask_email=self.authenticator.ask_email_on_signup,
            result_message=f"Your password was refused: {problem}.",
            alert="alert-danger",
            two_factor_auth=self.authenticator.allow_2fa,
            recaptcha_key=self.authenticator.recaptcha_key,
            tos=self.authenticator.tos,
        )
        self.finish(html)

    def get_result_message(self, user, human, taken, confirmed, is_admin):
        alert, message = super().get_result_message(user, human, taken, confirmed, is_admin)
        if user is not None and user.is_authorized:
            return "alert-success", "The signup was successful! You can now log in."
        if alert == "alert-danger":
            self.set_status(400)  # a refused sign-up is the client's error, not a 200
            if user is None and human and not taken and confirmed:  # the password was fine
                message = "This username is not allowed: no spaces, commas or slashes."
        return alert, message


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page, working with JupyterHub 6 (no statsd timer there)."""

    def _render(self, login_error=None, username=None, sync=False, **_error_page_args):
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )

    async def post(self):
        data = {name: self.get_argument(name, strip=False) for name in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        name = data.get("username", "")
        error = "Invalid username or password."
        info = self.authenticator.get_user(name) if name else None
        if info is not None and not info.is_authorized:
            if info.is_valid_password(data.get("password", "")):
                error = f"User {name} has not been approved by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=name))
