"""Turn gpulab settings into JupyterHub configuration (used by jupyterhub_config.py)."""

from __future__ import annotations

import logging
import os
import runpy
import secrets
import shutil
import sys
from pathlib import Path

from .app import Context, build_context
from .background import start_background
from .secretfiles import refuse_exposed_secrets
from .settings import config_path

log = logging.getLogger("gpulab")

CLI_SERVICE = "gpulab-cli"


def proxy_command() -> list[str]:
    """configurable-http-proxy: the one installed beside gpulab, else from PATH."""
    beside = (
        Path(sys.prefix) / "share" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
    )
    if beside.exists():
        return [str(beside)]
    found = shutil.which("configurable-http-proxy")
    return [found] if found else ["configurable-http-proxy"]


def secret_file(path: Path) -> str:
    """A random token kept in a 0600 file, made on first use."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def default_role_scopes(name: str) -> list[str]:
    """The scopes of JupyterHub's default role ``name`` (admin, user, server), as this
    JupyterHub defines it."""
    from jupyterhub.roles import get_default_roles

    return next(r["scopes"] for r in get_default_roles() if r["name"] == name)


SHARE_SCOPES = ["shares!user", "read:shares!user"]
DIRECTORY_SCOPES = ["list:users", "read:users:name", "list:groups", "read:groups:name"]


def sharing_roles(sharing) -> list[dict]:
    """JupyterHub roles for ``sharing`` (docs/sharing.md): the scopes to make share links
    and shares of one's own servers, for every user or for the members of
    ``sharing.groups``; the names of users and groups with ``sharing.user_directory``."""
    directory = DIRECTORY_SCOPES if sharing.user_directory else []
    everyone = sharing.enabled and not sharing.groups
    roles = [
        {
            "name": "user",
            "description": "Every user: their own account and servers"
            + (", which they may share" if everyone else ""),
            "scopes": [
                *default_role_scopes("user"),
                *(SHARE_SCOPES if everyone else []),
                *directory,
            ],
        }
    ]
    if sharing.enabled and sharing.groups:
        roles.append(
            {
                "name": "gpulab-sharing",
                "description": "Members of sharing.groups: they may share their own servers",
                "scopes": SHARE_SCOPES,
                "groups": list(sharing.groups),
            }
        )
    return roles


def server_token_scopes(sharing) -> list[str]:
    """The scopes of a server's own token: JupyterHub's server role, and the owner's
    sharing of this server (the lab's Share dialog goes through the server extension).
    JupyterHub gives the token only those the owner holds."""
    directory = DIRECTORY_SCOPES if sharing.user_directory else []
    return [*default_role_scopes("server"), "shares!server", "read:shares!server", *directory]


def authenticator_with_api(authenticator_class: str | type) -> type:
    """The authenticator class JupyterHub would load for ``authenticator_class``, serving
    gpulab's REST API; a name that names none ends the hub with a settings error."""
    from traitlets import TraitError

    from .authapi import with_gpulab_api
    from .settings import SettingsError

    try:
        return with_gpulab_api(authenticator_class)
    except TraitError as e:
        raise SettingsError(
            f"hub.authenticator {authenticator_class!r} names no JupyterHub authenticator "
            f"(an entry-point name such as 'dummy' or 'pam', or a dotted class path): {e}"
        ) from None


def configure_hub(c) -> None:
    """``configure`` for a hub's config file: bad settings end the hub with their message
    (a traceback would bury it)."""
    from .settings import SettingsError

    try:
        configure(c)
    except SettingsError as e:
        log.critical("gpulab: the hub cannot start: %s", e)
        sys.exit(1)


def configure(c, ctx: Context | None = None) -> None:
    """Fill the JupyterHub config object ``c`` from gpulab settings: the services of
    ``ctx``, or of the settings file (what a hub process does)."""
    from gpulab.spawner.accounts import prepare_data_root

    # hub state (ledger, hub database, tokens) is for root's eyes only
    os.umask(0o077)
    ctx = ctx or build_context()
    s = ctx.settings
    backend = ctx.backend
    if backend.shares_machine:
        refuse_exposed_secrets(s, config_path())
    data = s.data_path
    prepare_data_root(data)
    backend.check()

    c.JupyterHub.bind_url = f"http://{s.hub.ip}:{s.hub.port}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = s.hub.hub_port
    # the proxy is checked by request, and a restarted hub adopts it (it keeps its routes)
    c.JupyterHub.proxy_class = "gpulab.hub.proxy.GpulabProxy"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = proxy_command()
    c.ConfigurableHTTPProxy.pid_file = str(data / "jupyterhub-proxy.pid")
    c.ConfigurableHTTPProxy.auth_token = secret_file(data / "proxy-token")
    c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
    # SameSite=Lax: browsers leave the hub's and user servers' cookies off other sites'
    # sub-requests and POSTs; no page script reads the hub's xsrf cookie, so HttpOnly too
    c.JupyterHub.tornado_settings.update(
        {
            "cookie_options": {"samesite": "Lax"},
            "xsrf_cookie_kwargs": {"samesite": "Lax", "httponly": True},
        }
    )
    # gpulab's versions of JupyterHub's pages first (the share link's and the OAuth
    # confirmation a guest sees, in plain words)
    c.JupyterHub.template_paths = [str(Path(__file__).with_name("templates"))]
    # admins' nav bar (templates/page.html): the GPU page, and the accounts waiting for approval
    from .api.admin_page import pending_signups

    c.JupyterHub.template_vars.update({"gpulab_pending_signups": pending_signups})
    # user servers outlive the hub: a hub restart re-attaches to them
    c.JupyterHub.cleanup_servers = False

    backend.configure_hub(c, ctx)

    admins = set(s.hub.admin_users)
    c.Authenticator.admin_users = admins
    if s.hub.authenticator == "gpulab":
        c.JupyterHub.authenticator_class = "gpulab"
        c.GpulabAuthenticator.bootstrap_admin = s.hub.admin_users[0]
        c.GpulabAuthenticator.bootstrap_password = s.hub.admin_password
        c.GpulabAuthenticator.open_signup = s.hub.open_signup
        # who may log in is decided by sign-up approval, not by an allow list
        c.Authenticator.allow_all = True
    else:
        c.JupyterHub.authenticator_class = s.hub.authenticator

    # The gpulab CLI on this machine (as root) reads this token to act as admin.
    c.JupyterHub.services = [
        {"name": CLI_SERVICE, "api_token": secret_file(data / "cli-token")},
    ]
    # A role of its own with the admin role's scopes, not the admin role: any admin role in
    # load_roles beside Authenticator.admin_users makes JupyterHub warn, and listing the
    # human admins in it instead would take admin away, at each restart, from users an
    # admin made admin in /hub/admin. Without the admin flag, which only the admin role
    # sets, the token cannot create admin users or change admins (JupyterHub asks for
    # the flag there); the CLI does neither.
    c.JupyterHub.load_roles = [
        {
            "name": CLI_SERVICE,
            "description": "The gpulab CLI on the hub's machine: the admin role's scopes",
            "scopes": default_role_scopes("admin"),
            "services": [CLI_SERVICE],
        },
        *sharing_roles(s.sharing),
    ]
    c.Spawner.server_token_scopes = server_token_scopes(s.sharing)
    # the token a guest's browser gets for a shared server reaches that server, nothing else
    c.Spawner.oauth_client_allowed_scopes = []

    for grant in backend.settle(ctx.ledger):
        log.warning(
            "gpulab: released GPU %s of %s: its server died while the hub was down",
            grant.gpu_id,
            grant.user,
        )

    # settle interrupted Return/Get GPU operations, then watch for idle GPUs
    start_background(lambda app: ctx.switch.run_background(app))
    # settle the jobs a restart interrupted, then schedule
    start_background(lambda app: ctx.jobs.run_background())
    # take over the model servers (or pods) an earlier hub process started
    start_background(lambda app: ctx.models.run_background())

    if s.hub.extra_config:
        runpy.run_path(s.hub.extra_config, init_globals={"c": c, "settings": s})
    # gpulab's REST API is served by the authenticator (hub/authapi.py), whichever one
    # the settings or the extra config chose
    c.JupyterHub.authenticator_class = authenticator_with_api(c.JupyterHub.authenticator_class)
    # the services, for the API handlers and the spawners (hub/app.py); set last, so an
    # extra config that replaces tornado_settings does not take them away
    c.JupyterHub.tornado_settings.update({"gpulab": ctx})
