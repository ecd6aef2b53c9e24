"""gpulab's REST API (/hub/api/gpulab/...), served in the hub's process by its authenticator.

JupyterHub gives each authenticator's ``get_handlers(app)`` the hub's URL prefix, as it
gave the deprecated ``JupyterHub.extra_handlers``. The API cannot be a hub-managed
service of its own: its handlers work on the hub's state in this process (users'
spawners, which Return/Get GPU stop and start; the GPU ledger; the hub's database for
users, groups and scope checks).
"""

from __future__ import annotations


def api_handlers() -> list[tuple]:
    """Every handler of gpulab's REST API, paths under /api/gpulab/ (before the prefix),
    gpulab's rules in front of JupyterHub's sharing API (``api/sharing.py``), the pages
    of read-only links (``/gpulab/view/...``, ``api/views.py``) and the admins' GPU page
    (``/gpulab/admin``, ``api/admin_page.py``)."""
    from .api import (
        admin_page,
        environments,
        gpu,
        gpus,
        jobs,
        models,
        openapi,
        sharing,
        storage,
        sweeps,
        usage,
        views,
    )

    return [
        *admin_page.page_handlers,
        *sharing.hub_handlers,
        *sharing.default_handlers,
        *views.default_handlers,
        *views.page_handlers,
        *gpus.default_handlers,
        *usage.default_handlers,
        *gpu.default_handlers,
        *storage.default_handlers,
        *jobs.default_handlers,
        *sweeps.default_handlers,
        *models.default_handlers,
        *environments.default_handlers,
        *openapi.default_handlers,
    ]


class GpulabApiMixin:
    """An Authenticator mixin: its handlers are gpulab's API, then the authenticator's own.

    First, so no other handler shadows them; they match only /api/gpulab/... (and
    JupyterHub's sharing paths, whose handlers they extend), so they shadow none of the
    authenticator's pages (JupyterHub's ``/api/(.*)`` 404 comes after every one of them)."""

    def get_handlers(self, app):
        return [*api_handlers(), *super().get_handlers(app)]


def with_gpulab_api(authenticator_class: str | type) -> type:
    """The authenticator class ``authenticator_class`` names (resolved as JupyterHub
    resolves ``JupyterHub.authenticator_class``: an entry-point name of the
    ``jupyterhub.authenticators`` group or a dotted import path), serving gpulab's API."""
    from jupyterhub.app import JupyterHub

    trait = JupyterHub.class_traits()["authenticator_class"]
    base = trait.validate(None, authenticator_class)
    if issubclass(base, GpulabApiMixin):
        return base
    name = f"{base.__name__}WithGpulabApi"  # config of the base (c.DummyAuthenticator) applies
    return type(name, (GpulabApiMixin, base), {"__module__": __name__})
