"""Accounts with passwords, sign-up and admin approval; the first admin is bootstrapped.

Built on NativeAuthenticator: users sign up at /hub/signup, an admin approves them at
/hub/authorize (unless open sign-up is on, or the admin added the user in the hub
first), passwords are stored bcrypt-hashed in the
hub database. On first start the first admin account is created with the password
from the settings (``hub.admin_password`` / ``GPULAB_HUB__ADMIN_PASSWORD``) or a
generated one, printed once.
"""

from __future__ import annotations

import secrets

import bcrypt
from jupyterhub import orm
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.handlers import SignUpHandler as NativeSignUpHandler
from nativeauthenticator.orm import UserInfo
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode


class GpulabAuthenticator(NativeAuthenticator):
    bootstrap_admin = Unicode(
        "", config=True, help="Admin account created with a password on first start."
    ).tag(config=True)
    bootstrap_password = Unicode(
        "", config=True, help="Its password; empty: generate one and print it once."
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bootstrap_admin:
            self._bootstrap()

    def _bootstrap(self) -> None:
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
        ours = {"/login": LoginHandler, "/signup": SignUpHandler}
        return [(path, ours.get(path, h)) for path, h in handlers]


class SignUpHandler(NativeSignUpHandler):
    """Tells users who may log in at once (invited, or open sign-up) that they may."""

    def get_result_message(self, user, *args):
        alert, message = super().get_result_message(user, *args)
        if user is not None and user.is_authorized:
            return "alert-success", "The signup was successful! You can now log in."
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
