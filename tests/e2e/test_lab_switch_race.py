"""Return GPU and Get GPU while the user keeps running cells: the notebook loses nothing.

In a real browser (Debian's Chromium, Playwright, as in ``test_lab_browser``) a user
sets ``x = 41`` in a notebook, then clicks Return GPU (and later Get GPU) in the top bar
and runs ``x += 1`` 0, 0.1, 0.3, 1 and 2 s after the click. Whenever the cell runs, in the
old kernel or the restored one, its output is what it would have been without the switch
(42, 43, ...: no NameError, no traceback, no busy-notebook dialog, the prompt's count goes
on), and every variable is still there at the end. Meanwhile the top bar never contradicts
itself: it never offers Get GPU beside a GPU, nor Return GPU beside "No GPU", nor an action
it cannot take; while a switch runs its button says what is happening.
"""

import re
import time

import pytest
from playwright.sync_api import expect
from test_lab_browser import held_by, open_in_lab, shot

from hubfixture import wait_for

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = "race.ipynb"
DELAYS = (0, 0.1, 0.3, 1, 2)
"""Seconds between the click on Return GPU (or Get GPU) and the run of the next cell."""

CELL = "x += 1\nlog.append(x)\nprint(x)"

# Every render of the top bar (a MutationObserver) and a sample every 100 ms, kept when it
# differs from the one before: its label, its button, its state, and any dialog open.
WATCH_TOP_BAR = """() => {
  const widget = document.getElementById('gpulab-gpu');
  const label = widget.querySelector('.gpulab-gpu-label');
  const button = widget.querySelector('.gpulab-gpu-button');
  const seen = (window.gpulabTopBar = []);
  let last = '';
  const sample = () => {
    const dialog = document.querySelector('.jp-Dialog');
    const now = {
      label: label.textContent,
      button: button.hidden ? '' : button.textContent,
      disabled: button.disabled,
      state: widget.dataset.gpulabState,
      dialog: dialog ? dialog.innerText : ''
    };
    const key = JSON.stringify(now);
    if (key !== last) {
      last = key;
      seen.push({ ...now, t: Math.round(performance.now()) });
    }
  };
  new MutationObserver(sample).observe(widget, {
    subtree: true, childList: true, characterData: true, attributes: true
  });
  new MutationObserver(sample).observe(document.body, { childList: true });
  window.setInterval(sample, 100);
  sample();
}"""

DONE_OR_DIALOG = """(want) => {
  const widget = document.getElementById('gpulab-gpu');
  return !!document.querySelector('.jp-Dialog') || widget.dataset.gpulabState === want;
}"""


def contradictions(samples: list[dict]) -> list[str]:
    """What the top bar showed that a user could not make sense of."""
    bad = []
    for s in samples:
        offers = s["button"] if s["button"] in ("Return GPU", "Get GPU") else ""
        if re.match(r"GPU \d", s["label"]) and offers == "Get GPU":
            bad.append(f"a GPU beside Get GPU: {s}")
        elif s["label"].startswith("No GPU") and offers == "Return GPU":
            bad.append(f"No GPU beside Return GPU: {s}")
        elif offers and s["disabled"]:
            bad.append(f"an action offered that cannot be taken: {s}")
        elif offers and s["state"] == "busy":
            bad.append(f"an action offered while a switch runs: {s}")
        if s["dialog"]:
            bad.append(f"a dialog: {s['dialog']!r}")
    return bad


def new_cell(page, code: str):
    """A new last cell with ``code`` typed in, not run yet."""
    notebook = page.locator(".jp-NotebookPanel .jp-Notebook")
    cells = notebook.locator(".jp-Cell")
    before = cells.count()
    cells.last.locator(".jp-InputArea-prompt").click()  # the last cell: a new one goes below
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    expect(cells).to_have_count(before + 1)
    cell = cells.nth(before)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    expect(cell.locator(".cm-content")).to_have_text(code.replace("\n", ""))
    return cell


def run(page, cell) -> None:
    """Run the cell as the user does: click into it, Ctrl+Enter."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+Enter")


def finished(cell, count: int, output: str) -> None:
    """The cell ran as cell ``count`` of the kernel and printed ``output``, nothing else."""
    prompt = cell.locator(".jp-InputArea-prompt")
    expect(prompt).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=30_000)
    outputs = cell.locator(".jp-OutputArea-output")
    expect(outputs).to_have_count(1)
    assert outputs.inner_text().strip() == output, outputs.inner_text()
    expect(prompt).to_have_text(f"[{count}]:")


def test_cells_run_around_return_and_get_gpu_lose_nothing(hub, page):
    user = hub.create_user("rhea")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    widget = open_in_lab(page, hub, user, NOTEBOOK)
    label = widget.locator(".gpulab-gpu-label")
    button = widget.locator(".gpulab-gpu-button")
    expect(page.locator(".jp-NotebookPanel .jp-Notebook")).to_be_visible(timeout=60_000)
    # the notebook's kernel is connected (a cell run before that is not run at all)
    expect(page.get_by_text(re.compile(r"\| Idle$"))).to_be_visible(timeout=60_000)
    page.evaluate(WATCH_TOP_BAR)

    cell = new_cell(page, "x = 41\nlog = []\nprint(x)")
    run(page, cell)
    finished(cell, 1, "41")
    count, x = 1, 41

    def switch(action: str, delay: float, want: str, doing: str) -> None:
        nonlocal count, x
        expect(button).to_have_text(action)
        expect(button).to_be_enabled()
        cell = new_cell(page, CELL)
        mark = page.evaluate("window.gpulabTopBar.length")
        button.click()
        clicked = time.monotonic()
        if delay:
            page.wait_for_timeout(delay * 1000)  # the scenario: the user runs a cell now
        run(page, cell)
        after = time.monotonic() - clicked
        where = f"{action}, cell run {after:.2f}s after the click (meant: {delay}s)"

        # the switch ends: the top bar says so (or a dialog came up: that is a failure)
        page.wait_for_function(DONE_OR_DIALOG, arg=want, timeout=60_000)
        dialog = page.locator(".jp-Dialog")
        assert dialog.count() == 0, f"{where}: a dialog came up: {dialog.inner_text()!r}"
        expect(button).to_have_text("Get GPU" if want == "nogpu" else "Return GPU")
        expect(button).to_be_enabled()
        if want == "nogpu":
            expect(label).to_have_text(re.compile(r"^No GPU · 3 of 3 free"))
            wait_for(lambda: held_by(hub, "rhea") == [], 10, "the ledger to free the GPU")
        else:
            wait_for(lambda: len(held_by(hub, "rhea")) == 1, 10, "the ledger to grant a GPU")
            (index,) = held_by(hub, "rhea")
            expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))

        # the cell ran once, in a kernel that had every variable, and counted on
        count, x = count + 1, x + 1
        try:
            finished(cell, count, str(x))
        except AssertionError as e:
            shot(page, f"race-{action.split()[0].lower()}-{delay}")
            raise AssertionError(f"{where}: {e}") from None

        samples = page.evaluate("(mark) => window.gpulabTopBar.slice(mark)", mark)
        confused.extend(f"{where}: {bad}" for bad in contradictions(samples))
        if doing not in {s["button"] for s in samples}:
            confused.append(f"{where}: the button never said {doing!r}: {samples}")

    confused: list[str] = []  # the top bar's, reported once every cell has been checked
    for delay in DELAYS:
        switch("Return GPU", delay, "nogpu", "Returning…")
        switch("Get GPU", delay, "gpu", "Getting GPU…")
    shot(page, "race-done")

    # every variable is there: one kernel saw every increment, in order
    cell = new_cell(page, "print(x, log)")
    run(page, cell)
    finished(cell, count + 1, f"{x} {list(range(42, x + 1))}")
    assert not confused, "the top bar contradicted itself:\n" + "\n".join(confused)
