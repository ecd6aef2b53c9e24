"""Profiles -> what a server gets; shared by every spawner backend.

A spawn names a profile (``{"profile": "gpu-1"}``) and may ask for a different GPU
count (``{"gpus": 2}``); the spawn form posts the same options.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from gpulab.hub.settings import Profile, Settings, SettingsError


class BadOptions(ValueError):
    """The spawn options are invalid; the message is shown to the user (HTTP 400)."""


@dataclass(frozen=True)
class ServerRequest:
    profile: Profile
    gpus: int


def resolve(settings: Settings, user_options: object) -> ServerRequest:
    """Validate spawn options and turn them into a profile and a GPU count."""
    if user_options is None:
        user_options = {}
    if not isinstance(user_options, dict):
        raise BadOptions(f"server options must be a JSON object, got {user_options!r}")
    unknown = set(user_options) - {"profile", "gpus"}
    if unknown:
        raise BadOptions(f"unknown server option(s): {', '.join(sorted(unknown))}")
    slug = user_options.get("profile")
    if slug is not None and not isinstance(slug, str):
        raise BadOptions(f"profile must be a profile name, got {slug!r}")
    try:
        profile = settings.profile(slug)
    except SettingsError as e:
        raise BadOptions(str(e)) from None
    gpus = user_options.get("gpus", profile.gpus)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise BadOptions(f"gpus must be a whole number of 0 or more, got {gpus!r}")
    return ServerRequest(profile=profile, gpus=gpus)


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """The spawn form's fields -> user_options."""
    profile = (formdata.get("profile") or [None])[0]
    return {"profile": profile} if profile else {}


def render_form(settings: Settings, free: int, total: int, chosen: str = "") -> str:
    """The spawn form: one radio button a profile (``chosen`` checked, when it is one),
    with the live GPU availability."""
    rows = []
    if chosen not in {p.slug for p in settings.profiles}:
        chosen = settings.profile(None).slug
    for p in settings.profiles:
        gpu_text = "no GPU" if p.gpus == 0 else f"{p.gpus} GPU{'s' if p.gpus > 1 else ''}"
        unavailable = p.gpus > free
        rows.append(
            f"""
<label class="gpulab-profile{" gpulab-unavailable" if unavailable else ""}"
       style="display:block;padding:.6em;border:1px solid #ddd;border-radius:4px;margin:.4em 0">
  <input type="radio" name="profile" value="{html.escape(p.slug)}"
         {"checked" if p.slug == chosen else ""}>
  <strong>{html.escape(p.display_name)}</strong>
  <span style="color:#666">&middot; {gpu_text}{" &middot; not enough free now" if unavailable else ""}</span>
  {f'<div style="color:#555;margin-left:1.6em">{html.escape(p.description)}</div>' if p.description else ""}
</label>"""
        )
    status = (
        f"{free} of {total} GPU{'s' if total != 1 else ''} free" if total else "no GPUs on this hub"
    )
    return f"""
<div class="gpulab-form">
  <p class="gpulab-gpu-status"><strong>GPUs:</strong> {status}</p>
  {"".join(rows)}
</div>"""
