"""JupyterLab's top bar in a real browser on the kubernetes backend: Return GPU and Get GPU
move the server to a new pod, and the page loads again from it with the notebook's
variables (Debian's Chromium, the fake cluster; see test_lab_browser.py).

A module of its own: the suite's parallel workers run everything on the fake cluster in
one worker (tests/conftest.py), and the other browser tests need none.
"""

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect
from test_lab_browser import open_in_lab, run_cell, shot

from k8sfixture import user_pod

pytestmark = pytest.mark.timeout(180)

NO_AUTOSAVE = (
    "import json, pathlib; c = pathlib.Path.home() / '.jupyter'; c.mkdir(exist_ok=True); "
    "(c / 'jupyter_server_config.json').write_text("
    "json.dumps({'YDocExtension': {'document_save_delay': None}}))"
)
"""A cell's line: the user's next servers write co-edited documents only when asked."""


def reloaded_from_new_pod(page, widget) -> None:
    """Wait for the page to load again (from the server's new pod); if it does not, say
    what it showed instead."""
    try:
        page.wait_for_function("() => window.gpulabBeforeMove === undefined", timeout=90_000)
    except PlaywrightTimeoutError:
        status = widget.locator(".gpulab-gpu-status").all_inner_texts()
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        raise AssertionError(f"the page stayed: top bar {status}, dialogs {dialogs}") from None


def test_on_kubernetes_return_gpu_reloads_the_page_from_the_new_pod(k8s, kube, page):
    hub = k8s
    user = hub.create_user("ken")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    notebook = "ken-probe.ipynb"
    widget = open_in_lab(page, hub, user, notebook)
    label = widget.locator(".gpulab-gpu-label")
    button = widget.locator(".gpulab-gpu-button")
    cell = run_cell(page, f"kept = 41\n{NO_AUTOSAVE}\nprint('set')")
    expect(cell.locator(".jp-OutputArea-output")).to_contain_text("set", timeout=60_000)
    page.evaluate("window.gpulabBeforeMove = true")

    # Return GPU: the server moves to a CPU pod, and the page loads again from it
    button.click()
    reloaded_from_new_pod(page, widget)
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu", timeout=60_000)
    expect(label).to_have_text("No GPU · 2 of 2 free")
    # the reloaded page says how the move went, and what was restored
    status = widget.locator(".gpulab-gpu-status")
    expect(status).to_contain_text("moved to a new pod without a GPU")
    expect(status).to_contain_text(re.compile(r"Restored \d+ variables? in 1 notebook"))
    assert hub.gpus()["free"] == 2
    (container,) = user_pod(kube, "ken")["spec"]["containers"]
    assert "nvidia.com/gpu" not in ((container.get("resources") or {}).get("limits") or {})
    # the file browser lists the home of the new server: the same files
    expect(page.locator(".jp-DirListing-item", has_text=notebook)).to_be_visible()
    shot(page, "k8s-1-moved-to-cpu")

    # the reopened notebook runs in the restored kernel: its variable is there
    cell = run_cell(page, "print(kept + 1)")
    expect(cell.locator(".jp-OutputArea-output")).to_contain_text("42", timeout=60_000)
    shot(page, "k8s-2-variable-kept")

    # Get GPU: back onto a GPU pod, the page again from it
    page.evaluate("window.gpulabBeforeMove = true")
    button.click()
    reloaded_from_new_pod(page, widget)
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    assert [g["user"] for g in hub.gpus()["gpus"] if g.get("user")] == ["ken"]
    # the output of the last cell on the CPU pod was written to the file before the move,
    # by that server (its documents are not saved on a timer any more, nor by this page)
    expect(page.locator(".jp-NotebookPanel .jp-OutputArea-output", has_text="42")).to_be_visible()
    cell = run_cell(page, "print(kept * 2)")
    expect(cell.locator(".jp-OutputArea-output")).to_contain_text("82", timeout=60_000)
    shot(page, "k8s-3-back-on-gpu")
