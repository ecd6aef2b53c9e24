"""Profiles -> what a server gets; shared by every spawner backend.

A spawn names a profile (``{"profile": "gpu-1"}``) and may ask for a different GPU
count (``{"gpus": 2}``); the spawn form posts the same options. The form shows the pool
(free of total, the requests waiting for GPUs, the GPUs' model and memory) and marks the
profiles whose servers would get no GPU now; its script keeps that current while the page
is open, from the server's GPU status in gpulab's API.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gpulab.hub.inventory import Gpu
from gpulab.hub.settings import Profile, Settings, SettingsError


class BadOptions(ValueError):
    """The spawn options are invalid; the message is shown to the user (HTTP 400)."""


@dataclass(frozen=True)
class ServerRequest:
    profile: Profile
    gpus: int
    environment: str = ""
    """The environment snapshot it starts from (``name``, or ``owner/name``), or ""."""


ENVIRONMENT_REF = re.compile(r"(?:[^/\s]{1,255}/)?[a-z0-9][a-z0-9._-]{0,62}")


def resolve(settings: Settings, user_options: object) -> ServerRequest:
    """Validate spawn options and turn them into a profile and a GPU count."""
    if user_options is None:
        user_options = {}
    if not isinstance(user_options, dict):
        raise BadOptions(f"server options must be a JSON object, got {user_options!r}")
    unknown = set(user_options) - {"profile", "gpus", "environment"}
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
    environment = user_options.get("environment") or ""
    if not isinstance(environment, str) or (
        environment and not ENVIRONMENT_REF.fullmatch(environment)
    ):
        raise BadOptions(
            f"environment must name an environment snapshot (NAME, or OWNER/NAME for one "
            f"shared with you), got {environment!r}"
        )
    return ServerRequest(profile=profile, gpus=gpus, environment=environment)


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """The spawn form's fields -> user_options."""
    profile = (formdata.get("profile") or [None])[0]
    environment = (formdata.get("environment") or [None])[0]
    options = {"profile": profile} if profile else {}
    if environment:
        options["environment"] = environment
    return options


# -- the spawn form ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """The GPU pool as the spawn form shows it when the page is made."""

    free: int
    total: int
    waiting: int = 0
    """Requests waiting in the queue for GPUs (servers' Get GPU, jobs): the ledger
    promises them the free GPUs, so a new server gets none while any wait."""
    gpus: Sequence[Gpu] = ()
    """The inventory, for the GPUs' model and memory (where it knows them)."""


@dataclass(frozen=True)
class LiveStatus:
    """Where the form's script follows the pool while the page is open."""

    url: str
    """The server's GPU status in gpulab's API (``/hub/api/gpulab/gpu?user=&server=``):
    a long poll (``wait`` and ``etag``) that answers at each change of the pool or queue."""
    xsrf: str
    """The page's xsrf token: the hub asks it of requests made with the login cookie."""


LIVE_WAIT_SECONDS = 30
"""How long one request of the form's script waits for a change before it asks again."""

NUMBER_WORDS = {"one": 1, "single": 1, "two": 2, "dual": 2, "three": 3, "four": 4, "quad": 4}


def gpu_count_text(gpus: int) -> str:
    """``no GPU``, ``1 GPU``, ``2 GPUs``: how the form says a profile's GPU count."""
    return "no GPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus != 1 else ''}"


def name_says_gpus(name: str, gpus: int) -> bool:
    """Whether a profile's display name already says its GPU count: ``1 GPU``,
    ``2x A100 GPUs``, ``Dual GPU`` (GPU and the number), ``CPU only`` or ``no GPU`` (none)."""
    text = name.lower()
    if not re.search(r"gpus?\b", text):
        return gpus == 0 and "cpu only" in text
    if gpus == 0:
        return bool(re.search(r"\b(no|without|0)\s*gpus?\b", text)) or "cpu only" in text
    # a number of its own: "2x", "2-GPU", not the 100 of "A100" or the 2 of "2.5"
    numbers = {int(n) for n in re.findall(r"(?<![\w.])(\d+)(?![\d.])", text)}
    numbers |= {n for word, n in NUMBER_WORDS.items() if re.search(rf"\b{word}\b", text)}
    return gpus in numbers


def pool_text(free: int, total: int) -> str:
    """The form's status line: ``2 of 3 GPUs free``."""
    if not total:
        return "no GPUs on this hub"
    return f"{free} of {total} GPU{'s' if total != 1 else ''} free"


def queue_text(waiting: int) -> str:
    """``2 requests waiting for GPUs`` (empty when none wait)."""
    if not waiting:
        return ""
    return f"{waiting} request{'s' if waiting != 1 else ''} waiting for GPUs"


def shortfall(gpus: int, pool: Pool) -> str:
    """Why a profile's server would get no GPUs now ("" when it would)."""
    if gpus == 0:
        return ""
    if gpus > pool.total:
        return "more GPUs than this hub has"
    if gpus > pool.free or pool.waiting:
        return "not enough free now"
    return ""


def memory_text(memory_bytes: int) -> str:
    """A GPU's memory in GiB, as NVML counts it: ``79.6 GiB``, ``16 GiB``."""
    gib = memory_bytes / 2**30
    return f"{gib:.0f} GiB" if gib >= 100 or gib == round(gib) else f"{gib:.1f} GiB"


def models_text(gpus: Sequence[Gpu]) -> str:
    """The pool's GPUs by model and memory (``4 × NVIDIA H100 80GB HBM3, 79.6 GiB``), in
    inventory order; "" when the inventory knows neither of any GPU."""
    if not any(g.model or g.memory_bytes for g in gpus):
        return ""
    counts: dict[tuple[str, int], int] = {}
    for g in gpus:
        counts[g.model, g.memory_bytes] = counts.get((g.model, g.memory_bytes), 0) + 1
    parts = []
    for (model, memory), n in counts.items():
        what = ", ".join(t for t in (model, memory_text(memory) if memory else "") if t)
        parts.append(f"{n} × {what or 'model not known'}")
    return "; ".join(parts)


@dataclass(frozen=True)
class EnvironmentChoice:
    """An environment snapshot the spawn form offers."""

    ref: str
    """What the form posts (``name``, or ``owner/name`` for one shared with the user)."""
    description: str = ""
    packages: int = 0


def render_form(
    settings: Settings,
    pool: Pool,
    chosen: str = "",
    live: LiveStatus | None = None,
    environments: Sequence[EnvironmentChoice] = (),
    chosen_environment: str = "",
) -> str:
    """The spawn form: one radio button a profile (``chosen`` checked, when it is one), the
    pool's availability and GPUs, and, with ``live``, a script that keeps the availability
    current while the page is open (without it, or without JavaScript, the values stay as
    rendered). With ``environments``, a choice of what the server starts from: the base
    environment, or one of those snapshots (``chosen_environment`` selected)."""
    if chosen not in {p.slug for p in settings.profiles}:
        chosen = settings.profile(None).slug
    rows = "".join(_profile_row(p, p.slug == chosen, pool) for p in settings.profiles)
    queue = queue_text(pool.waiting)
    models = models_text(pool.gpus)
    live_attrs = script = ""
    if live is not None and pool.total:
        live_attrs = (
            f' data-gpu-status="{html.escape(live.url)}" data-xsrf="{html.escape(live.xsrf)}"'
            f' data-wait="{LIVE_WAIT_SECONDS}"'
        )
        script = f"<script>{LIVE_SCRIPT}</script>"
    models_line = (
        f'\n  <p class="gpulab-gpu-models" style="color:#555">'
        f"The hub's GPUs: {html.escape(models)}</p>"
        if models
        else ""
    )
    return f"""
<div class="gpulab-form" id="gpulab-form"{live_attrs}>
  <p class="gpulab-gpu-status" role="status" aria-live="polite"><strong><span
     class="gpulab-free">{pool_text(pool.free, pool.total)}</span></strong><span
     class="gpulab-queue">{f" · {queue}" if queue else ""}</span><span
     class="gpulab-stale" style="color:#a00"></span></p>{models_line}
  {rows}{_environment_choice(environments, chosen_environment)}
  {script}
</div>"""


def _environment_choice(environments: Sequence[EnvironmentChoice], chosen: str) -> str:
    if not environments:
        return ""
    options = ['<option value="">Base environment</option>']
    for e in environments:
        label = e.ref + (f" — {e.description}" if e.description else "")
        label += f" ({e.packages} package{'' if e.packages == 1 else 's'})"
        selected = " selected" if e.ref == chosen else ""
        options.append(
            f'<option value="{html.escape(e.ref)}"{selected}>{html.escape(label)}</option>'
        )
    return f"""
<label class="gpulab-environment" style="display:block;margin:.8em 0 .4em">
  <strong>Environment</strong>
  <select name="environment" style="margin-left:.6em">{"".join(options)}</select>
  <div style="color:#555">The packages the server starts with: the base, or one of your
  saved environments (docs: environment snapshots)</div>
</label>"""


def _profile_row(p: Profile, checked: bool, pool: Pool) -> str:
    name = p.display_name or p.slug
    count = "" if name_says_gpus(name, p.gpus) else f" · {gpu_count_text(p.gpus)}"
    why = shortfall(p.gpus, pool)
    description = (
        f'\n  <div style="color:#555;margin-left:1.6em">{html.escape(p.description)}</div>'
        if p.description
        else ""
    )
    return f"""
<label class="gpulab-profile{" gpulab-unavailable" if why else ""}" data-gpus="{p.gpus}"
       style="display:block;padding:.6em;border:1px solid #ddd;border-radius:4px;margin:.4em 0">
  <input type="radio" name="profile" value="{html.escape(p.slug)}"{" checked" if checked else ""}>
  <strong class="gpulab-profile-name">{html.escape(name)}</strong><span
     class="gpulab-profile-gpus" style="color:#666">{count}</span><span
     class="gpulab-why" style="color:#a60">{f" · {why}" if why else ""}</span>{description}
</label>"""


LIVE_SCRIPT = """
(function () {
  "use strict";
  // keeps the spawn form's availability current: one request at a time to the hub's
  // GPU status, which answers when the pool or the queue changes; none while hidden
  var root = document.getElementById("gpulab-form");
  if (!root || !root.dataset.gpuStatus || !window.fetch || !window.AbortController) {
    return;
  }
  var url = root.dataset.gpuStatus;
  var xsrf = root.dataset.xsrf;
  var wait = Number(root.dataset.wait) || 30;
  var RETRY_MS = 2500;  // after a failed request, doubled each time up to a minute
  var failures = 0;
  var SPACING_MS = 1000;  // at least, from one request to the next
  var DOT = " \\u00b7 ";
  var etag = "";
  var request = null;  // the AbortController of the request under way
  var timer = null;

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  function poolText(free, total) {
    return total ? free + " of " + plural(total, "GPU") + " free" : "no GPUs on this hub";
  }

  function queueText(waiting) {
    return waiting ? plural(waiting, "request") + " waiting for GPUs" : "";
  }

  // as shortfall() in gpulab.spawner.profiles
  function shortfall(gpus, s) {
    if (gpus === 0) { return ""; }
    if (gpus > s.total) { return "more GPUs than this hub has"; }
    return gpus > s.free || s.queue ? "not enough free now" : "";
  }

  function show(s) {
    root.querySelector(".gpulab-free").textContent = poolText(s.free, s.total);
    var queue = queueText(s.queue);
    root.querySelector(".gpulab-queue").textContent = queue ? DOT + queue : "";
    root.querySelectorAll(".gpulab-profile").forEach(function (row) {
      var why = shortfall(Number(row.dataset.gpus), s);
      row.classList.toggle("gpulab-unavailable", why !== "");
      row.querySelector(".gpulab-why").textContent = why ? DOT + why : "";
    });
  }

  function stale(yes) {
    root.querySelector(".gpulab-stale").textContent = yes ? DOT + "availability not current" : "";
  }

  function valid(s) {
    return !!s && [s.free, s.total, s.queue].every(function (n) {
      return typeof n === "number" && n >= 0;
    });
  }

  function later(ms) {
    clearTimeout(timer);
    timer = setTimeout(follow, ms);
  }

  function follow() {
    clearTimeout(timer);
    if (document.visibilityState === "hidden") { return; }
    var previous = request;
    var mine = request = new AbortController();
    if (previous) { previous.abort(); }  // one request at a time
    var started = Date.now();
    var query = etag ? "&wait=" + wait + "&etag=" + encodeURIComponent(etag) : "";
    fetch(url + query, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-XSRFToken": xsrf, "Accept": "application/json" },
      signal: mine.signal,
    })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (mine !== request) { return; }
        if (!valid(s)) { throw new Error("not a GPU status"); }
        etag = s.etag || "";
        failures = 0;
        stale(false);
        show(s);
        later(Math.max(0, SPACING_MS - (Date.now() - started)));
      })
      .catch(function () {
        if (mine !== request) { return; }  // stopped: the page was hidden, or asks again
        etag = "";
        stale(true);
        later(Math.min(60000, RETRY_MS * Math.pow(2, failures++)));
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      clearTimeout(timer);
      var stopping = request;
      request = null;
      if (stopping) { stopping.abort(); }
    } else {
      etag = "";  // at once, not after the next change
      follow();
    }
  });
  follow();
})();
"""
