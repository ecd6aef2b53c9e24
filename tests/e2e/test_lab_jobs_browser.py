"""Run as training job… and Sweep as training job… in a real browser (Debian's Chromium
through Playwright, a real hub and server): a user right-clicks a script in JupyterLab's
file browser, fills the job form (which refuses more GPUs than their limit before
anything is sent, saves the spec as YAML beside the script, and keeps the hub's refusal
of a taken name in the dialog), submits a PyTorch job of two workers, and watches it in
the Workloads panel until it succeeded; then sweeps the same script over a grid of three
learning rates and sees the sweep's trials done and ranked. A notebook runs as a job
from its toolbar, its parameters given as name=value, and the executed notebook is kept
beside the replica's log. Screenshots go to ``tests/artifacts/``.
"""

import json
import re

import pytest
import yaml
from playwright.sync_api import expect

import browsing
from browsing import log_in
from gpulab.spawner.accounts import ensure_account

pytestmark = pytest.mark.timeout(300)

TRAIN = """\
import os, sys

lr = next((float(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--lr=")), 0.1)
print(f"RANK={os.environ.get('RANK')} of WORLD_SIZE={os.environ.get('WORLD_SIZE')}", flush=True)
print(f"final_loss={lr}")
print(f"final_loss -> {lr * 10:g}")
"""


def shot(page, name: str) -> None:
    browsing.screenshot(page, f"lab-jobs-{name}")


def put(user, path: str, text: str) -> None:
    """Write a file into the user's home through their server, as JupyterLab does."""
    r = user.session.put(
        f"{user.server_url}/api/contents/{path}",
        json={"type": "file", "format": "text", "content": text},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text


def read(user, path: str) -> str:
    r = user.session.get(f"{user.server_url}/api/contents/{path}?content=1", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["content"]


def open_form(page, file: str, command: str):
    """Right-click ``file`` in the file browser and choose ``command``; the dialog."""
    item = page.locator('.jp-DirListing-item[data-file-type="python"]', has_text=file)
    item.click(button="right")
    page.locator(".lm-Menu-item", has_text=command).click()
    dialog = page.locator(".jp-Dialog", has=page.locator(".gpulab-JobForm"))
    expect(dialog).to_be_visible()
    return dialog


def test_a_script_runs_as_a_pytorch_job_and_as_a_sweep_from_the_file_browser(hub, page):
    user = hub.create_user("tara")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    put(user, "train.py", TRAIN)
    # a job of that name already: the form offers the next free one
    taken = {"name": "train", "command": ["true"]}
    assert user.session.post(hub.api("/gpulab/jobs"), json=taken, timeout=30).status_code == 201

    log_in(page, hub, "tara")
    page.goto(user.server_url + "/lab")
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=60_000)
    dialog = open_form(page, "train.py", "Run as training job…")
    name = dialog.locator(".gpulab-jf-name")
    preview = dialog.locator(".gpulab-jf-yaml")
    status = dialog.locator(".gpulab-jf-status")
    submit = dialog.locator(".jp-Dialog-footer .gpulab-jf-submit")
    expect(name).to_have_value("train-2")
    expect(dialog.locator(".gpulab-jf-gpuline")).to_have_text("3 of 3 GPUs free · your limit 2")
    expect(preview).to_contain_text("script: train.py")

    # PyTorch, two workers: with a GPU each it would be over the limit, refused in the form
    dialog.locator(".gpulab-jf-framework").select_option("pytorch")
    dialog.locator(".gpulab-jf-workers").fill("2")
    dialog.locator(".gpulab-jf-gpus").fill("2")
    gpu_row = dialog.locator('.gpulab-jf-row[data-field="gpus"]')
    expect(gpu_row.locator(".gpulab-jf-problem")).to_have_text(
        "The job needs 4 GPUs: more than your limit of 2"
    )
    expect(submit).to_be_disabled()
    shot(page, "1-over-the-limit")
    dialog.locator(".gpulab-jf-gpus").fill("0")
    expect(gpu_row.locator(".gpulab-jf-problem")).to_have_text("")
    expect(submit).to_be_enabled()
    spec = {
        "name": "train-2",
        "framework": "pytorch",
        "script": "train.py",
        "replicas": {"worker": {"count": 2, "gpus": 0}},
    }
    expect(preview).to_contain_text("replicas:\n  worker:\n    count: 2\n    gpus: 0\n")
    assert yaml.safe_load(preview.inner_text()) == spec

    # Save as YAML: beside the script, exactly what the preview shows, for the CLI
    dialog.locator(".jp-Dialog-footer .gpulab-jf-save").click()
    expect(status).to_have_text("Saved train.job.yaml: gpulab job submit train.job.yaml")
    saved = read(user, "train.job.yaml")
    assert saved == preview.inner_text() and yaml.safe_load(saved) == spec

    # the hub refuses a name taken: the form stays, saying why
    name.fill("train")
    submit.click()
    expect(status).to_have_text(
        "The hub refused the job: tara already has a job named train; delete it first"
    )
    expect(dialog).to_be_visible()
    shot(page, "2-refused")
    name.fill("train-2")
    submit.click()
    expect(dialog).to_be_hidden()

    # the Workloads panel opens on the job and follows it to the end
    panel = page.locator("#gpulab-workloads")
    expect(panel).to_be_visible()
    job = panel.locator('.gpulab-wl-job[data-name="train-2"]')
    expect(job).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(job.locator(".gpulab-wl-summary")).to_contain_text("2 replicas")
    expect(job.locator(".gpulab-wl-log")).to_contain_text("RANK=0 of WORLD_SIZE=2\nfinal_loss=0.1")
    shot(page, "3-job-succeeded")
    done = user.session.get(hub.api("/gpulab/jobs/train-2"), timeout=30).json()
    assert [r["state"] for r in done["replicas"]] == ["succeeded", "succeeded"]
    # the job's TensorBoard: on the folder it ran in (the home, here)
    job.locator(".gpulab-wl-tensorboard").click()
    expect(page.locator(".lm-TabBar-tab", has_text="TensorBoard: ~")).to_be_visible()
    boards = user.server_get("/gpulab/tensorboard").json()["tensorboards"]
    assert [b["logdir"] for b in boards] == [""], boards

    # a grid sweep of the same script over three learning rates
    page.locator('.jp-SideBar [data-id="filebrowser"]').click()
    dialog = open_form(page, "train.py", "Sweep as training job…")
    expect(dialog.locator(".gpulab-jf-sweep")).to_be_checked()
    dialog.locator(".gpulab-jf-name").fill("lr")
    dialog.locator(".gpulab-jf-param-name").fill("lr")
    dialog.locator(".gpulab-jf-param-values").fill("0.3, 0.1, 0.2")
    dialog.locator(".gpulab-jf-parallel").fill("3")
    dialog.locator(".gpulab-jf-metric").fill("final_loss")
    # the metrics read with a pattern of the user's: the "final_loss -> 1" lines, not the others
    dialog.locator(".gpulab-jf-metrics-from").select_option("format")
    where = dialog.locator(".gpulab-jf-metrics-where")
    where.fill(r"(\w+) -> ([0-9.]+)")
    expect(dialog.locator(".gpulab-jf-trialnote")).to_have_text("3 trials, named lr-1, -2…")
    preview = dialog.locator(".gpulab-jf-yaml")
    expect(preview).to_contain_text("parameters:\n  lr: [0.3, 0.1, 0.2]\n")
    sweep_spec = yaml.safe_load(preview.inner_text())
    assert sweep_spec == {
        "name": "lr",
        "job": {"framework": "plain", "script": "train.py", "replicas": {"worker": {"count": 1, "gpus": 0}}},
        "parameters": {"lr": [0.3, 0.1, 0.2]},
        "algorithm": "grid",
        "max_parallel": 3,
        "objective": {"metric": "final_loss", "goal": "minimize"},
        "metrics_format": r"(\w+) -> ([0-9.]+)",
    }  # fmt: skip
    shot(page, "4-sweep-form")
    dialog.locator(".jp-Dialog-footer .gpulab-jf-submit").click()
    expect(dialog).to_be_hidden()

    sweep = panel.locator('[data-kind="sweeps"] .gpulab-wl-row[data-name="lr"]')
    expect(sweep).not_to_have_attribute("data-state", "running", timeout=90_000)
    ranked = user.session.get(hub.api("/gpulab/sweeps/lr"), timeout=30).json()
    assert ranked["state"] == "succeeded", [t["message"] for t in ranked["trials"]]
    expect(sweep).to_have_attribute("data-state", "succeeded")
    expect(sweep.locator(".gpulab-wl-summary")).to_have_text(
        re.compile(r"^3/3 trials · best lr-2: final_loss=1$")
    )
    # the panel opened on the sweep: its trials, ranked by the objective, the best first
    rows = sweep.locator(".gpulab-wl-trial")
    expect(rows.locator(".gpulab-wl-trial-name")).to_have_text(["lr-2 ★", "lr-3", "lr-1"])
    expect(rows.locator(".gpulab-wl-trial-params")).to_have_text(["lr=0.1", "lr=0.2", "lr=0.3"])
    expect(rows.locator(".gpulab-wl-trial-metric")).to_have_text(["1", "2", "3"])
    shot(page, "5-sweep-succeeded")
    assert [(t["name"], t["params"], t["metric"]) for t in ranked["trials"]] == [
        ("lr-2", {"lr": 0.1}, 1.0),
        ("lr-3", {"lr": 0.2}, 2.0),
        ("lr-1", {"lr": 0.3}, 3.0),
    ]


NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "lr = 1.0",
         "outputs": [], "execution_count": None},
        {"cell_type": "code", "metadata": {}, "source": "print(f'final_loss={lr}')",
         "outputs": [], "execution_count": None},
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}  # fmt: skip


def test_a_notebook_runs_as_a_job_from_its_toolbar_with_parameters(hub, page):
    user = hub.create_user("uma")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    r = user.session.put(
        f"{user.server_url}/api/contents/exp",
        json={"type": "directory"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    r = user.session.put(
        f"{user.server_url}/api/contents/exp/Explore.ipynb",
        json={"type": "notebook", "format": "json", "content": NOTEBOOK},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text

    log_in(page, hub, "uma")
    page.goto(user.server_url + "/lab/tree/exp/Explore.ipynb")
    toolbar = page.locator('.jp-NotebookPanel-toolbar [data-jp-item-name="gpulabRunAsJob"]')
    toolbar.locator("button").click(timeout=60_000)
    dialog = page.locator(".jp-Dialog", has=page.locator(".gpulab-JobForm"))
    expect(dialog.locator(".gpulab-jf-name")).to_have_value("explore")
    # a notebook's arguments are its parameters, name=value
    parameters = dialog.locator("textarea.gpulab-jf-args")
    parameters.fill("lr 0.5")
    expect(dialog.locator('.gpulab-jf-row[data-field="args"] .gpulab-jf-problem')).to_have_text(
        'Parameters: "lr" is not name=value (a name of letters, digits and _)'
    )
    expect(dialog.locator(".jp-Dialog-footer .gpulab-jf-submit")).to_be_disabled()
    parameters.fill("lr=0.5\n")
    preview = dialog.locator(".gpulab-jf-yaml")
    spec = {
        "name": "explore",
        "framework": "plain",
        "notebook": "Explore.ipynb",
        "args": ["lr=0.5"],
        "workdir": "exp",
        "replicas": {"worker": {"count": 1, "gpus": 0}},
    }
    expect(preview).to_contain_text('args: ["lr=0.5"]')
    assert yaml.safe_load(preview.inner_text()) == spec
    shot(page, "6-notebook-form")
    dialog.locator(".jp-Dialog-footer .gpulab-jf-submit").click()
    expect(dialog).to_be_hidden()

    job = page.locator('#gpulab-workloads .gpulab-wl-job[data-name="explore"]')
    expect(job).to_have_attribute("data-state", "succeeded", timeout=90_000)
    expect(job.locator(".gpulab-wl-log")).to_contain_text("final_loss=0.5")
    shot(page, "7-notebook-job")
    # the notebook as it ran opens from the job's details, its outputs there
    job.locator(".gpulab-wl-output").click()
    expect(page.locator(".lm-TabBar-tab", has_text="worker-0.ipynb")).to_be_visible()
    ran_view = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
    expect(ran_view).to_contain_text("final_loss=0.5")
    shot(page, "8-output-notebook")
    # the notebook as the replica ran it, beside its log, with the parameter set
    done = user.session.get(hub.api("/gpulab/jobs/explore"), timeout=30).json()
    home = ensure_account(hub.unix_prefix, "uma", hub.data_root).home
    ran = json.loads((home / done["logs"].removeprefix("~/") / "worker-0.ipynb").read_text())
    assert "lr = 0.5" in "".join(ran["cells"][1]["source"])
    assert "final_loss=0.5" in "".join(ran["cells"][2]["outputs"][0]["text"])
