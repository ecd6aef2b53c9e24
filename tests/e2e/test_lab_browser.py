"""JupyterLab's top bar in a real browser: the GPU widget returns the GPU and gets it back.

Debian's Chromium, driven by Playwright, signs up and logs in through the hub's own
forms (a user the admin added may sign up and log in at once), opens JupyterLab (with
the @gpulab/lab extension scripts/install builds) on a real server and clicks Return GPU
(through the busy-notebook dialog), Get GPU, and Cancel while waiting in the queue; the
hub's ledger is checked after every click. Screenshots of each step go to
``tests/artifacts/``.
"""

import re
import threading

import pytest
from playwright.sync_api import expect

import browsing
from browsing import log_in, open_palette
from hubfixture import open_notebook, run_in_kernel, wait_for

pytestmark = pytest.mark.timeout(180)


def shot(page, name: str) -> None:
    browsing.screenshot(page, f"lab-{name}")


def held_by(hub, name: str) -> list[int]:
    """Inventory indices (what the top bar calls "GPU n") of the GPUs ``name`` holds."""
    return [g["index"] for g in hub.gpus()["gpus"] if g.get("user") == name]


def test_top_bar_returns_the_gpu_and_gets_it_back(hub, page):
    user = hub.create_user("lena")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    (index,) = held_by(hub, "lena")
    kernel = open_notebook(user, "probe.ipynb")

    def run(code: str) -> str:
        return run_in_kernel(user.server_url, kernel, user.token, code, 60)

    # 40 MB of weights, then an object that takes 2 s to save: the checkpoint's progress
    # can be seen
    run(
        "import time, numpy as np\nweights = np.ones(5_000_000)\nclass Slow:\n"
        "    def __reduce__(self):\n        time.sleep(2)\n        return (Slow, ())\n"
        "slow = Slow()\nkept = 41"
    )

    log_in(page, hub, "lena")
    page.goto(user.server_url + "/lab")
    widget = page.locator("#gpulab-gpu")
    label = widget.locator(".gpulab-gpu-label")
    button = widget.locator(".gpulab-gpu-button")
    status = widget.locator(".gpulab-gpu-status")

    # the server's GPU in the top bar; Return GPU is the one command enabled in the palette
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))
    expect(button).to_have_text("Return GPU")
    expect(button).to_be_enabled()
    open_palette(page).fill("GPU")
    items = page.locator(".lm-CommandPalette-item")
    expect(items.filter(has_text="Return GPU")).not_to_have_class(re.compile("lm-mod-disabled"))
    expect(items.filter(has_text="Get GPU")).to_have_class(re.compile("lm-mod-disabled"))
    shot(page, "1-gpu-and-palette")
    page.keyboard.press("Escape")

    # Return GPU while the notebook runs a cell: the dialog names it and interrupts it
    interrupted = []

    def long_cell():
        try:
            run("import time\nfor i in range(600): time.sleep(0.1)")
        except RuntimeError as e:  # the cell's error, as the notebook shows it
            interrupted.append(str(e))

    runner = threading.Thread(target=long_cell, daemon=True)
    runner.start()
    wait_for(
        lambda: user.server_get(f"/api/kernels/{kernel}").json()["execution_state"] == "busy",
        30,
        "the kernel to be busy",
    )
    button.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("probe.ipynb is still running code")
    assert held_by(hub, "lena") == [index]
    shot(page, "2-busy-dialog")
    dialog.get_by_role("button", name="Interrupt and return").click()
    # while the kernel is checkpointed, the status line says how much is written
    expect(status).to_contain_text(re.compile(r"^Checkpointing kernels… \(3\d MiB written\)$"))
    shot(page, "2b-checkpointing")

    # the ledger frees the GPU, the widget says so and reports what the kernel kept
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu")
    expect(label).to_have_text(re.compile(r"^No GPU · 3 of 3 free"))
    expect(button).to_have_text("Get GPU")
    expect(status).to_contain_text("Returned GPU")
    expect(status).to_contain_text(re.compile(r"Restored \d+ variables? in 1 notebook"))
    assert held_by(hub, "lena") == [] and hub.gpus()["free"] == 3
    runner.join(30)
    assert interrupted and "KeyboardInterrupt" in interrupted[0]
    shot(page, "3-returned")

    # Get GPU: a GPU is granted again, the widget shows it, the variable is still there
    button.click()
    expect(widget).to_have_attribute("data-gpulab-state", "gpu")
    expect(button).to_have_text("Return GPU")
    expect(status).to_contain_text("Got GPU")
    (index,) = held_by(hub, "lena")
    assert hub.gpus()["free"] == 2
    expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))
    shot(page, "4-got-it-back")
    assert run("print(kept)").strip() == "41"
    # the server's settings never asked the user to fetch Jupyter's news from the internet
    expect(page.get_by_text("official Jupyter news")).to_have_count(0)


def test_get_gpu_waits_in_the_queue_and_can_be_cancelled(hub, page):
    max_, nia, omar = (hub.create_user(n) for n in ("max", "nia", "omar"))
    for user, profile in ((max_, "gpu-2"), (nia, "gpu-1"), (omar, "cpu")):
        assert user.spawn(wait=False, profile=profile).status_code in (201, 202)
    for user in (max_, nia, omar):
        user.wait_ready()
    assert hub.gpus()["free"] == 0

    log_in(page, hub, "omar")
    page.goto(omar.server_url + "/lab")
    widget = page.locator("#gpulab-gpu")
    label = widget.locator(".gpulab-gpu-label")
    button = widget.locator(".gpulab-gpu-button")
    status = widget.locator(".gpulab-gpu-status")
    cancel = widget.locator(".gpulab-gpu-cancel")
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu", timeout=60_000)
    expect(label).to_have_text("No GPU · 0 of 3 free")

    # every GPU is held: Get GPU waits in the queue, and Cancel takes it out
    button.click()
    expect(widget).to_have_attribute("data-gpulab-state", "busy")
    expect(status).to_have_text("Waiting for 1 GPU: position 1 in the queue")
    expect(button).to_be_disabled()
    shot(page, "queue-1-waiting")
    cancel.click()
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu")
    expect(status).to_have_text("Get GPU cancelled")
    expect(cancel).to_be_hidden()
    assert held_by(hub, "omar") == []

    # waiting again, it gets the GPU nia's server gives up
    button.click()
    expect(status).to_have_text("Waiting for 1 GPU: position 1 in the queue")
    (freed,) = held_by(hub, "nia")
    nia.stop()
    expect(widget).to_have_attribute("data-gpulab-state", "gpu")
    expect(label).to_have_text(re.compile(rf"^GPU {freed}\b"))
    expect(status).to_contain_text("Got GPU")
    assert held_by(hub, "omar") == [freed]
    shot(page, "queue-2-granted")


def test_on_a_hub_without_gpus_the_top_bar_offers_no_get_gpu(make_hub, page):
    hub = make_hub({"gpus": {"ids": []}}).start()  # and no NVML on the test machines
    assert hub.gpus()["total"] == 0
    quinn = hub.create_user("quinn")
    assert quinn.spawn(profile="cpu").status_code in (201, 202)

    log_in(page, hub, "quinn")
    page.goto(quinn.server_url + "/lab")
    widget = page.locator("#gpulab-gpu")
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu", timeout=60_000)
    expect(widget.locator(".gpulab-gpu-label")).to_have_text("No GPU · this hub has none")
    expect(widget.locator(".gpulab-gpu-button")).to_be_hidden()
    open_palette(page).fill("GPU")
    items = page.locator(".lm-CommandPalette-item")
    expect(items.filter(has_text="Get GPU")).to_have_class(re.compile("lm-mod-disabled"))
    shot(page, "no-gpus")


def test_the_top_bar_says_when_the_hub_reclaimed_an_idle_gpu(make_hub, page):
    hub = make_hub(
        {
            "gpus": {"ids": ["0"], "reclaim_interval": 1},
            "profiles": [
                {"slug": "cpu", "gpus": 0, "default": True},
                {"slug": "gpu-idle", "gpus": 1, "idle_return": "6s"},
            ],
        }
    ).start()
    rosa = hub.create_user("rosa")
    assert rosa.spawn(profile="gpu-idle").status_code in (201, 202)
    kernel = open_notebook(rosa, "idle.ipynb")
    # a kernel running code is never idle: this cell runs until the page shows the GPU
    cell = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.1)\nkept = 7"
    running = threading.Thread(
        target=run_in_kernel, args=(rosa.server_url, kernel, rosa.token, cell, 120), daemon=True
    )
    running.start()

    log_in(page, hub, "rosa")
    page.goto(rosa.server_url + "/lab")
    widget = page.locator("#gpulab-gpu")
    status = widget.locator(".gpulab-gpu-status")
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    go = {"type": "file", "format": "text", "content": ""}
    r = rosa.session.put(rosa.server_url + "/api/contents/go", json=go, timeout=30)
    assert r.status_code in (200, 201), r.text
    running.join(30)
    assert not running.is_alive()
    # the page did not ask: the hub's idle reclaim returns the GPU between two polls
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu", timeout=40_000)
    reclaimed = re.compile(
        r"^Returned GPU 0; .*\(reclaimed: GPU idle for \d+s\)\. Restored \d+ variables in 1 notebook$"
    )
    expect(status).to_have_text(reclaimed)
    assert held_by(hub, "rosa") == []
    shot(page, "reclaimed")
    # a page opened later still says why there is no GPU
    page.reload()
    expect(widget).to_have_attribute("data-gpulab-state", "nogpu", timeout=60_000)
    expect(status).to_have_text(reclaimed)
    assert run_in_kernel(rosa.server_url, kernel, rosa.token, "print(kept)", 60).strip() == "7"


def test_workloads_panel_follows_a_job_shows_its_log_and_cancels_it(hub, page):
    user = hub.create_user("pia")
    steps = "for i in $(seq 1 900); do echo step $i; sleep 0.2; done"
    spec = {"name": "lab-job", "command": ["sh", "-c", steps],
            "replicas": {"worker": {"count": 2, "gpus": 1}}}  # fmt: skip
    r = user.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    done = {"name": "lab-done", "command": ["sh", "-c", "echo 'gpulab-metric: loss=0.5'"]}
    assert user.session.post(hub.api("/gpulab/jobs"), json=done, timeout=30).status_code == 201
    assert user.spawn(profile="cpu").status_code in (201, 202)

    log_in(page, hub, "pia")
    page.goto(user.server_url + "/lab")
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=60_000)
    page.locator('.jp-SideBar [data-id="gpulab-workloads"]').click()
    panel = page.locator("#gpulab-workloads")
    job = panel.locator('.gpulab-wl-job[data-name="lab-job"]')
    finished = panel.locator('.gpulab-wl-job[data-name="lab-done"]')
    expect(job).to_have_attribute("data-state", "running")
    expect(job.locator(".gpulab-wl-summary")).to_contain_text("2 replicas · 2 GPUs")
    expect(finished).to_have_attribute("data-state", "succeeded")
    expect(finished.locator(".gpulab-wl-summary")).to_contain_text("loss=0.5")
    expect(panel.locator('[data-kind="models"] .gpulab-wl-empty')).to_have_text(
        "No models deployed"
    )
    expect(panel.locator(".gpulab-wl-status")).to_contain_text("Updated")
    # the month's GPU time: the job's two GPUs (no NVML here: nothing sampled, no share)
    expect(panel.locator(".gpulab-wl-usage")).to_have_text(
        re.compile(r"^This month: (<0\.1|\d+\.\d) GPU-hours held$")
    )

    # its details: the replicas, and the log of the one chosen, followed as it grows
    job.locator(".gpulab-wl-line").click()
    replicas = job.locator(".gpulab-wl-replica")
    expect(replicas).to_have_count(2)
    expect(replicas.first).to_contain_text("running")
    log = job.locator(".gpulab-wl-log")
    expect(log).to_contain_text("==> gpulab: worker-0 of job lab-job")
    expect(log).to_contain_text("step 3")
    job.locator(".gpulab-wl-replica-select").select_option("worker-1")
    expect(log).to_contain_text("==> gpulab: worker-1 of job lab-job")
    seen = int(re.findall(r"step (\d+)", log.inner_text())[-1])
    expect(log).to_contain_text(f"step {seen + 5}")
    shot(page, "workloads-1-job-log")

    # Cancel asks first; then every replica stops and the GPUs go back
    job.locator(".gpulab-wl-cancel").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Cancel job lab-job?")
    dialog.get_by_role("button", name="Keep running").click()
    expect(job).to_have_attribute("data-state", "running")
    assert hub.gpus()["free"] == 1
    job.locator(".gpulab-wl-cancel").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Cancel job").click()
    expect(job).to_have_attribute("data-state", "cancelled")
    expect(job.locator(".gpulab-wl-cancel")).to_have_count(0)
    assert hub.gpus()["free"] == 3
    shot(page, "workloads-2-cancelled")


def test_the_server_relays_the_users_own_workloads_and_nothing_else_of_the_hub(hub):
    user = hub.create_user("quin")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    base = user.server_url + "/gpulab/hub"
    r = user.session.get(base + "/jobs", timeout=30)
    assert r.status_code == 200 and r.json() == {"jobs": []}
    r = user.session.get(base + "/jobs/nosuch", timeout=30)
    assert r.status_code == 404 and r.json()["message"] == "quin has no job named nosuch"
    # what the lab's forms send: a job submitted through the server is the owner's
    r = user.session.post(base + "/jobs", json={"name": "relayed", "command": "true"}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["user"] == "quin"
    r = user.session.post(base + "/jobs", json={"name": "Bad Name", "command": "true"}, timeout=30)
    assert r.status_code == 400 and r.json()["message"].startswith("name: "), r.text
    r = user.session.get(base + "/gpus", timeout=30)
    assert r.status_code == 200 and r.json()["user"]["name"] == "quin", r.text
    r = user.session.delete(base + "/models/nosuch", timeout=30)
    assert r.status_code == 404 and "nosuch" in r.json()["message"], r.text
    # the server writes its open co-edited documents when the lab asks (none open here)
    r = user.session.post(user.server_url + "/gpulab/documents/save", json={}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"documents_saved": [], "documents_not_saved": []}
    # the owner's environment snapshots
    r = user.session.get(base + "/environments", timeout=30)
    assert r.status_code == 200 and r.json() == {"environments": []}, r.text
    r = user.session.get(base + "/environments/no.such", timeout=30)
    assert r.status_code == 404 and "no environment named no.such" in r.json()["message"]
    r = user.session.post(base + "/environments", json={"name": "Bad Name"}, timeout=30)
    assert r.status_code == 400 and "name must be" in r.json()["message"], r.text
    # nothing else of the hub's API: no other methods or paths, no way out of gpulab's
    assert user.session.post(base + "/models/m/cancel", json={}, timeout=30).status_code == 404
    assert user.session.patch(base + "/jobs/relayed", json={}, timeout=30).status_code == 404
    assert user.session.delete(base + "/jobs/relayed", timeout=30).status_code == 404
    assert user.session.get(user.server_url + "/gpulab/hub/users", timeout=30).status_code == 404
    assert user.session.get(base + "/jobs/../users", timeout=30).status_code == 404
    assert user.session.get(base + "/jobs%2F..%2F..%2Fusers", timeout=30).status_code == 404


EMPTY_NOTEBOOK = {
    "cells": [],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def open_in_lab(page, hub, user, notebook: str):
    """A new empty notebook, opened in JupyterLab by the user (logged in through the hub's
    forms) once the top bar shows the server's GPU; the top bar's widget."""
    r = user.session.put(
        f"{user.server_url}/api/contents/{notebook}",
        json={"type": "notebook", "format": "json", "content": EMPTY_NOTEBOOK},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    log_in(page, hub, user.name)
    page.goto(f"{user.server_url}/lab/tree/{notebook}")
    widget = page.locator("#gpulab-gpu")
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    return widget


def run_cell(page, code: str):
    """Type ``code`` into a new last cell of the open notebook and run it; that cell."""
    expect(page.locator(".jp-NotebookPanel .jp-Notebook")).to_be_visible(timeout=60_000)
    # the notebook's kernel is connected (a cell run before that is not run at all)
    expect(page.get_by_text(re.compile(r"\| Idle$"))).to_be_visible(timeout=60_000)
    cells = page.locator(".jp-NotebookPanel .jp-Cell")
    page.locator(".jp-NotebookPanel .jp-Notebook").click()
    page.keyboard.press("Escape")
    before = cells.count()
    page.keyboard.press("b")  # a new cell below
    expect(cells).to_have_count(before + 1)
    cell = cells.nth(before)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    return cell
