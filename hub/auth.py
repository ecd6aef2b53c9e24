"""Accounts with passwords, sign-up and admin approval; the first admin is bootstrapped.

Built on NativeAuthenticator: users sign up at /hub/signup, an admin approves them at
/hub/authorize (unless open sign-up is on), passwords are stored bcrypt-hashed in the
hub database. On first start the first admin account is created with the password
from the settings (``hub.admin_password`` / ``GPULAB_HUB__ADMIN_PASSWORD``) or a
generated one, printed once.
"""

from __future__ import annotations

import secrets

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.orm import UserInfo
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
                banner, name, password, banner,
            )
