"""Live co-editing latency: a key typed in one browser until a teammate's browser shows it.

Starts a real hub (local backend), creates alice and bob, spawns alice's server (CPU
profile), shares it with bob through the hub's API with the admin's token (``POST
/hub/api/shares/alice/``; the lab's Share dialog makes the same share through alice's
server) and puts ``shared.ipynb`` (a Python 3 kernelspec, one code
cell) into alice's home with her token. Debian's Chromium, driven by Playwright, signs
up and logs in alice and bob in two browser contexts through the hub's forms, then opens
the notebook three times at ``/user/alice/lab/tree/shared.ipynb``: two tabs of alice's
context, and bob's context (through the hub's "Open alice's server" page, whose button
is clicked). All three stay open for the whole run, so the document's room on alice's
server (jupyter-collaboration, Yjs over a websocket) has the same three clients in both
setups; what differs is only who watches:

- **shared**: A = alice's first tab types, B = bob's page watches (two hub users, the
  share);
- **reference**: A = the same tab of alice types, B = alice's second tab watches (one
  user, two tabs; JupyterLab's document provider turns y-websocket's BroadcastChannel
  off, so these edits too go through the server).

One edit: Playwright presses one marker key (``a``-``z``, ``0``-``9`` in turn, appended
to the end of the first cell, whose editor A has focused) in A. A keydown listener in A
(capture phase) records when the key arrives; a MutationObserver in B records when the
first cell's editor (``.jp-Notebook .jp-Cell .cm-content``) first shows each new text.
Edit i is paired by its marker: A's i-th keydown (its key checked) with the time B first
showed the text ending in the first i markers. The next edit starts once B has shown it
(and 50 ms more); one never shown within ``--timeout`` seconds fails the run (exit
status 1, with both pages' text and screenshots under /tmp). The two setups alternate
in blocks of 10 edits, after 5 warm-up edits each that are not counted.

Both pages run in one browser on this machine, and each page reads the same system
clock: ``performance.timeOrigin + performance.now()`` less that page's offset from
``Date.now()``, measured at startup at Date.now()'s millisecond ticks (sub-millisecond
times, comparable across pages).

    .venv/bin/python benchmarks/coedit.py [--edits 100] [--timeout 10]

Run as root (the hub makes a unix account per user). Goals: shared p50 <= 100 ms, and
shared p50 / reference p50 <= 1.2 (a teammate sees an edit about as soon as the owner's
own second tab does). Last line: ``coedit_ratio_vs_same_user: <shared p50 / reference
p50>``.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' harness

from browsing import CHROMIUM, CHROMIUM_ARGS, log_in  # noqa: E402
from hubfixture import SHARED_SETTINGS, Hub, User  # noqa: E402

NOTEBOOK = "shared.ipynb"
FIRST_CELL = "x = 1  # "
CELL = ".jp-Notebook .jp-Cell .cm-content"
MARKERS = string.ascii_lowercase + string.digits
WARMUP = 5  # edits per setup, not counted
BLOCK = 10  # edits of one setup before the other's
THINK = 0.05  # seconds between one edit seen and the next key
VIEWPORT = {"width": 1400, "height": 800}
SHOTS = Path("/tmp")

# The page's clock: the system clock (as Date.now() reads it) with performance.now()'s
# resolution. Its offset is measured where Date.now() ticks over to a new millisecond.
CLOCK_JS = """() => {
  const hr = () => performance.timeOrigin + performance.now();
  const offsets = [];
  const until = hr() + 40;
  let last = Date.now();
  while (offsets.length < 20 && hr() < until) {
    const now = Date.now();
    if (now !== last) {
      offsets.push(hr() - now);
      last = now;
    }
  }
  offsets.sort((a, b) => a - b);
  const offset = offsets[offsets.length >> 1];
  window.__coeditNow = () => hr() - offset;
  return offset;
}"""

# What the first cell's editor shows: its lines' text (remote cursors are drawn in a
# layer outside them). Every new text is noted with the time it first showed; keydowns
# in the editor are noted with their key.
RECORDER_JS = """(cell) => {
  const rec = { down: [], seen: new Map() };
  window.__coedit = rec;
  const editor = () => document.querySelector(cell);
  const text = () => {
    const el = editor();
    if (!el) return null;
    return [...el.querySelectorAll('.cm-line')].map((l) => l.textContent).join('\\n');
  };
  window.__coeditText = text;
  const note = () => {
    const t = text();
    if (t !== null && !rec.seen.has(t)) rec.seen.set(t, window.__coeditNow());
  };
  note();
  new MutationObserver(note).observe(document.querySelector('.jp-Notebook'), {
    childList: true, subtree: true, characterData: true,
  });
  window.addEventListener('keydown', (e) => {
    const el = editor();
    if (el && el.contains(e.target) && e.key.length === 1) {
      rec.down.push([e.key, window.__coeditNow()]);
    }
  }, true);
}"""


class NotSeen(Exception):
    pass


@dataclass
class Tab:
    """One open page of the notebook, and the HTTP errors and console errors it met."""

    name: str
    page: Page
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def response(r) -> None:
            if r.status >= 400:
                self.errors.append(f"HTTP {r.status} {r.request.method} {r.url}")

        self.page.on("response", response)
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text[:300]}") if m.type == "error" else None,
        )

    def text(self) -> str | None:
        return self.page.evaluate("() => window.__coeditText()")


@dataclass
class Setup:
    name: str
    a: Tab
    b: Tab
    latencies: list[float] = field(default_factory=list)  # ms, warm-up excluded
    local: list[float] = field(default_factory=list)  # ms, A's own editor showing the key


def notebook_model() -> dict:
    cell = {"cell_type": "code", "id": "first", "source": FIRST_CELL, "metadata": {},
            "outputs": [], "execution_count": None}  # fmt: skip
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    content = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec},
               "cells": [cell]}  # fmt: skip
    return {"type": "notebook", "content": content}


def open_notebook_page(tab: Tab, url: str, timeout_ms: float) -> None:
    """Open the shared notebook; confirm opening alice's server where the hub asks (a
    guest); wait for the lab and for the first cell to show the document's text."""
    page = tab.page
    page.goto(url)
    if "/hub/api/oauth2/authorize" in page.url:
        expect(page.locator("body")).to_contain_text("Open alice's server")
        page.get_by_role("button", name="Open the server").click()
        page.wait_for_url(lambda u: "/user/alice/lab" in u)
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=timeout_ms)
    expect(page.locator(CELL).first).to_be_visible(timeout=timeout_ms)
    expect(page.locator(CELL).first).to_contain_text(FIRST_CELL.strip(), timeout=timeout_ms)
    offset = page.evaluate(CLOCK_JS)
    page.evaluate(RECORDER_JS, CELL)
    print(f"{tab.name}: lab open at {page.url} (clock offset {offset:+.3f} ms)", flush=True)


def focus_end(a: Tab) -> None:
    """Put A's cursor at the end of the first cell, in edit mode."""
    editor = a.page.locator(CELL).first
    focused = "(el) => el.contains(document.activeElement)"
    if not editor.evaluate(focused):
        editor.click()
        a.page.keyboard.press("Control+End")
        expect(a.page.locator(".jp-Notebook.jp-mod-editMode")).to_have_count(1)
    if not editor.evaluate(focused):
        raise SystemExit(f"{a.name}: clicking the first cell did not focus its editor")


def fail(setup: Setup, i: int, expected: str, why: str) -> NotSeen:
    lines = [f"{setup.name} edit {i}: {why}", f"  expected the cell to end: {expected[-40:]!r}"]
    for tab in (setup.a, setup.b):
        shot = SHOTS / f"coedit-{setup.name}-{tab.name.replace(' ', '-')}.png"
        try:
            text = tab.text()
            tab.page.screenshot(path=str(shot))
        except Exception as e:  # the page itself may be what broke
            text, shot = f"(unreadable: {e})", "(none)"
        shown = text[-40:] if isinstance(text, str) else text
        lines.append(f"  {tab.name} ({tab.page.url}) shows: {shown!r}; screenshot {shot}")
        lines += [f"    {e}" for e in tab.errors[-10:]]
    return NotSeen("\n".join(lines))


def edit(setup: Setup, i: int, typed: str, key: str, timeout: float, count: bool) -> str:
    """Type ``key`` in A, wait for B to show it; record the latency. The new text."""
    a, b = setup.a, setup.b
    expected = typed + key
    focus_end(a)
    before = a.page.evaluate("() => window.__coedit.down.length")
    a.page.keyboard.press(key)
    try:
        b.page.wait_for_function(
            "t => window.__coedit.seen.has(t)", arg=expected, timeout=timeout * 1000, polling=5
        )
    except PlaywrightTimeout:
        shown = a.page.evaluate("t => window.__coedit.seen.has(t)", expected)
        why = f"{b.name} never showed the key within {timeout:g} s" + (
            f" ({a.name} shows it)" if shown else f" ({a.name} does not show it either)"
        )
        raise fail(setup, i, expected, why) from None
    down = a.page.evaluate("n => window.__coedit.down.slice(n)", before)
    if len(down) != 1 or down[0][0] != key:
        raise fail(setup, i, expected, f"{a.name} noted keydowns {down}, not one {key!r}")
    t_down = down[0][1]
    t_seen = b.page.evaluate("t => window.__coedit.seen.get(t)", expected)
    t_local = a.page.evaluate("t => window.__coedit.seen.get(t)", expected)
    if count:
        setup.latencies.append(t_seen - t_down)
        if t_local is not None:
            setup.local.append(t_local - t_down)
    time.sleep(THINK)
    return expected


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(browser: Browser, hub: Hub, alice: User, args: argparse.Namespace) -> list[Setup]:
    contexts = {name: browser.new_context(viewport=VIEWPORT) for name in ("alice", "bob")}
    for name, context in contexts.items():
        context.set_default_timeout(30_000)
        log_in(context.new_page(), hub, name)
        print(f"{name}: signed up and logged in", flush=True)
    url = f"{alice.server_url}/lab/tree/{NOTEBOOK}"
    typer = Tab("alice tab 1", contexts["alice"].pages[0])
    twin = Tab("alice tab 2", contexts["alice"].new_page())
    guest = Tab("bob", contexts["bob"].pages[0])
    for tab in (typer, twin, guest):
        open_notebook_page(tab, url, 120_000)
    setups = [Setup("shared", typer, guest), Setup("reference", typer, twin)]

    typed = typer.text()
    assert typed == FIRST_CELL, typed
    done = 0  # edits typed so far: edit ``done`` types MARKERS[done % len(MARKERS)]
    for setup in setups:
        for _ in range(WARMUP):
            typed = edit(setup, done, typed, MARKERS[done % len(MARKERS)], args.timeout, False)
            done += 1
    print(f"warm-up: {WARMUP} edits per setup", flush=True)
    t0 = time.monotonic()
    while any(len(s.latencies) < args.edits for s in setups):
        for setup in setups:
            for _ in range(min(BLOCK, args.edits - len(setup.latencies))):
                key = MARKERS[done % len(MARKERS)]
                typed = edit(setup, done, typed, key, args.timeout, True)
                done += 1
        counts = ", ".join(f"{s.name} {len(s.latencies)}" for s in setups)
        print(f"edits: {counts} ({time.monotonic() - t0:.0f} s)", flush=True)
    for tab in (typer, twin, guest):
        if tab.errors:
            print(f"{tab.name} met {len(tab.errors)} errors while loading or editing:")
            for line in dict.fromkeys(tab.errors):
                print(f"  {line}")
    for context in contexts.values():
        context.close()
    return setups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=100, help="counted edits per setup")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for one edit")
    args = parser.parse_args()
    if args.edits < 1:
        parser.error("--edits must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the hub makes a unix account for each user")
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: run scripts/install --test")
    expect.set_options(timeout=30_000)

    hub = Hub(SHARED_SETTINGS)
    try:
        hub.start()
        alice = hub.create_user("alice")
        hub.create_user("bob")
        r = alice.spawn(profile="cpu")
        if r.status_code not in (201, 202):
            raise SystemExit(f"spawning alice's server: {r.status_code} {r.text}")
        r = hub.admin.post(hub.api("/shares/alice/"), json={"user": "bob"}, timeout=30)
        if r.status_code != 200:
            raise SystemExit(f"sharing alice's server with bob: {r.status_code} {r.text}")
        r = alice.session.put(
            f"{alice.server_url}/api/contents/{NOTEBOOK}", json=notebook_model(), timeout=30
        )
        if r.status_code not in (200, 201):
            raise SystemExit(f"putting {NOTEBOOK}: {r.status_code} {r.text}")
        print(f"hub at {hub.url}: alice's server runs and is shared with bob", flush=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                setups = measure(browser, hub, alice, args)
            except NotSeen as e:
                print(e, file=sys.stderr, flush=True)
                return 1
            finally:
                browser.close()
    finally:
        hub.cleanup()

    print("\n== edit in A -> shown in B (ms) ==")
    print(f"{'setup':<10} {'A':<12} {'B':<12} {'n':>4} {'p50':>7} {'p95':>7} {'max':>7}")
    for s in setups:
        v = s.latencies
        print(
            f"{s.name:<10} {s.a.name:<12} {s.b.name:<12} {len(v):>4} {pct(v, 0.5):>7.1f} "
            f"{pct(v, 0.95):>7.1f} {max(v):>7.1f}"
        )
    local = [x for s in setups for x in s.local]
    if local:
        print(f"A's own editor showing the key: p50 {pct(local, 0.5):.1f} ms (n {len(local)})")
    shared, reference = setups
    p50, ref50 = pct(shared.latencies, 0.5), pct(reference.latencies, 0.5)
    ratio = p50 / ref50 if ref50 > 0 else float("inf")
    print("goals: shared p50 <= 100 ms, shared p50 / reference p50 <= 1.2")
    print(f"coedit_p50_ms: {p50:.1f}")
    print(f"coedit_p95_ms: {pct(shared.latencies, 0.95):.1f}")
    print(f"coedit_ratio_vs_same_user: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
