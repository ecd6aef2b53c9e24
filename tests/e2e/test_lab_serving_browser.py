"""Serving and TensorBoard from JupyterLab, in a real browser (Debian's Chromium through
Playwright, a real hub and server, SavedModels exported with real TensorFlow): a user
right-clicks a model's folder in the file browser, Serve model…, deploys it and watches
the dialog follow it until it serves; the Try it panel calls it with the request it
pre-filled from the signature and with one typed in, shows the calls to make from
elsewhere without any real token, moves the model to version 1 (its answers change) and
undeploys it. Then TensorBoard opens from the launcher on the file browser's folder and
shows its page, with the run written in a kernel, in a lab tab. Screenshots go to
``tests/artifacts/``.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

import browsing
from browsing import log_in, open_palette
from hubfixture import export_to_home, wait_for

pytestmark = pytest.mark.timeout(300)

WRITE_RUN = """
from tensorboard.summary import Writer  # TensorBoard's own writer: no TensorFlow, no torch

writer = Writer("runs/first")
for step in range(5):
    writer.add_scalar("loss", 1.0 / (step + 1), step=step)
writer.close()
print("written")
"""


def shot(page, name: str) -> None:
    browsing.screenshot(page, f"lab-serving-{name}")


def folder(page, name: str):
    """The file browser's entry of the folder ``name``."""
    text = page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$"))
    return page.locator('.jp-DirListing-item[data-isdir="true"]', has=text)


def open_lab(page, hub, user) -> None:
    log_in(page, hub, user.name)
    page.goto(user.server_url + "/lab")
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=60_000)


def test_a_model_folder_is_served_tried_moved_to_version_1_and_undeployed(hub, page):
    user = hub.create_user("sv-lab")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    export_to_home(hub, user.name, "models/line/1", 0.5, 2.0)
    export_to_home(hub, user.name, "models/line/2", 0.5, 3.0)
    export_to_home(hub, user.name, "export/line", 0.5, 2.0)  # a SavedModel outside a version folder

    open_lab(page, hub, user)

    # a folder holding a SavedModel itself: a clear message, no form
    folder(page, "export").dblclick()
    folder(page, "line").click(button="right")
    page.locator(".lm-Menu-item", has_text="Serve model…").click()
    dialog = page.locator(".jp-Dialog", has=page.locator(".gpulab-ServeForm"))
    expect(dialog.locator(".gpulab-serve-refusal")).to_have_text(
        "~/export/line holds a SavedModel itself, but the hub serves a folder of numbered "
        "version folders (TF Serving's layout). Move it into one, e.g. ~/models/line/1, and "
        "serve ~/models/line."
    )
    expect(dialog.locator(".gpulab-serve-name")).to_have_count(0)
    shot(page, "1-not-a-base-path")
    close = dialog.locator(".jp-Dialog-button.jp-mod-reject")
    expect(close).to_have_text("Close")
    expect(dialog.locator(".jp-Dialog-button.jp-mod-accept")).to_have_count(0)
    close.click()
    expect(dialog).to_have_count(0)

    # the model's folder: what it holds, a name fitted from it, the GPUs free
    page.locator(".jp-BreadCrumbs-home").click()
    folder(page, "models").dblclick()
    folder(page, "line").click(button="right")
    page.locator(".lm-Menu-item", has_text="Serve model…").click()
    expect(dialog.locator(".gpulab-serve-where")).to_have_text("~/models/line · versions 1, 2")
    expect(dialog.locator(".gpulab-serve-name")).to_have_value("line")
    expect(dialog.locator(".gpulab-serve-pool")).to_have_text(re.compile(r"^3 of 3 free\b"))
    expect(
        dialog.locator('.gpulab-serve-policy[data-policy="latest"] input[type="radio"]')
    ).to_be_checked()
    shot(page, "2-serve-form")

    # a name the hub would refuse is caught before anything is sent
    dialog.locator(".gpulab-serve-name").fill("Line!")
    expect(dialog.locator(".gpulab-serve-status")).to_have_text(
        "name: 1-40 letters, digits, '_', '-' and '.', starting with a letter or digit"
    )
    dialog.locator(".gpulab-serve-name").fill("line")
    # TF Serving's batching: its sizes show once it is ticked; a bad one is caught here too
    expect(dialog.locator(".gpulab-serve-batch-size")).to_be_hidden()
    dialog.locator(".gpulab-serve-batching").check()
    dialog.locator(".gpulab-serve-batch-size").fill("0")
    expect(dialog.locator(".gpulab-serve-status")).to_have_text(
        "batching.max_batch_size: a whole number from 1 to 4096"
    )
    dialog.locator(".gpulab-serve-batch-size").fill("16")

    # Deploy: the status line follows the model until it serves, then Try it opens
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(dialog.locator(".gpulab-serve-status")).to_contain_text("Deploying line")
    shot(page, "3-deploying")
    expect(dialog).to_have_count(0, timeout=120_000)
    served = user.session.get(hub.api("/gpulab/models/line"), timeout=30).json()
    assert served["state"] == "available" and served["versions"] == "latest", served
    assert served["batching"] == {"max_batch_size": 16, "batch_timeout_micros": 1000}, served

    tryit = page.locator('.gpulab-TryIt[data-model="line"]')
    expect(tryit).to_have_attribute("data-state", "available")
    expect(page.locator(".lm-TabBar-tab", has_text="Try line")).to_be_visible()
    expect(tryit.locator(".gpulab-try-endpoint")).to_have_text(
        f"{hub.url}/hub/api/gpulab/models/line:predict"
    )
    inputs = tryit.locator(
        '.gpulab-try-sig[data-signature="serving_default"] .gpulab-try-tensor[data-kind="input"]'
    )
    expect(inputs).to_have_text("inputxfloat32[-1]")

    # the request pre-filled from the signature, then one typed in: version 2 answers
    request = tryit.locator(".gpulab-try-request")
    answer = tryit.locator(".gpulab-try-answer")
    latency = tryit.locator(".gpulab-try-latency")
    send = tryit.locator(".gpulab-try-send")
    expect(request).to_have_value('{"instances": [0]}')
    send.click()
    expect(answer).to_have_text('{"predictions": [3]}')
    expect(latency).to_have_text(re.compile(r"^Answered in \d+ ms$"))
    request.fill('{"instances": [1.0, 2.0]}')
    send.click()
    expect(answer).to_have_text('{"predictions": [3.5, 4]}')

    # the calls from elsewhere: the hub's full URL, the token left to the environment
    curl = tryit.locator('.gpulab-try-snippet[data-kind="curl"] .gpulab-try-code')
    expect(curl).to_contain_text(f"curl -X POST '{hub.url}/hub/api/gpulab/models/line:predict'")
    expect(curl).to_contain_text('-H "Authorization: Bearer $GPULAB_TOKEN"')
    expect(curl).to_contain_text("""-d '{"instances":[1,2]}'""")
    client = tryit.locator('.gpulab-try-snippet[data-kind="Python (gpulab)"] .gpulab-try-code')
    expect(client).to_contain_text('print(hub.predict("line", request))')
    assert served["token"] and served["token"] not in page.content()
    shot(page, "4-try-it")

    # a request the model refuses: TF Serving's message, in the panel
    request.fill('{"instances": [[1.0]], "signature_name": "nope"}')
    send.click()
    expect(answer).to_contain_text("nope")
    expect(answer).to_have_attribute("data-level", "error")

    # Update versions: only version 1 (and a label on it); its answers come back
    tryit.get_by_role("button", name="Update versions…").click()
    update = page.locator(".jp-Dialog", has=page.locator(".gpulab-ServeForm"))
    update.locator('.gpulab-serve-policy[data-policy="specific"] input[type="radio"]').check()
    update.locator(".gpulab-serve-version", has_text="1").locator("input").check()
    update.get_by_role("button", name="Add label").click()
    update.locator(".gpulab-serve-label").fill("stable")
    update.locator(".gpulab-serve-label-version").select_option("1")
    shot(page, "5-update-versions")
    update.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(update).to_have_count(0)
    expect(tryit.locator(".gpulab-try-status")).to_have_text("Updated: line now serves version 1")
    expect(tryit.locator(".gpulab-try-labels")).to_have_text("stable → 1")
    request.fill('{"instances": [1.0, 2.0]}')

    def answers_of_version_1() -> bool:
        send.click()
        expect(latency).not_to_have_text("Sending…")
        return answer.inner_text() == '{"predictions": [2.5, 3]}'

    wait_for(answers_of_version_1, 60, "version 1 to answer alone")
    expect(tryit.locator(".gpulab-try-versions")).to_contain_text("1 available", timeout=60_000)
    tryit.locator(".gpulab-try-pick").select_option(label="label stable (version 1)")
    expect(curl).to_contain_text(f"'{hub.url}/hub/api/gpulab/models/line/labels/stable:predict'")
    expect(client).to_contain_text('print(hub.predict("line", request, label="stable"))')
    send.click()
    expect(answer).to_have_text('{"predictions": [2.5, 3]}')
    shot(page, "6-version-1")

    # the tab closed, Try model… in the palette opens it again with a chooser
    page.locator(".lm-TabBar-tab", has_text="Try line").locator(".lm-TabBar-tabCloseIcon").click()
    expect(tryit).to_have_count(0)
    open_palette(page).fill("Try model")
    page.locator(".lm-CommandPalette-item", has_text="Try model…").click()
    chooser = page.locator(".jp-Dialog", has=page.locator(".gpulab-try-chooser"))
    expect(chooser.locator("select option")).to_have_text(["line (available)"])
    chooser.get_by_role("button", name="Try it").click()
    expect(tryit).to_have_attribute("data-state", "available")
    # and from the model's row in the Workloads panel
    page.locator(".lm-TabBar-tab", has_text="Try line").locator(".lm-TabBar-tabCloseIcon").click()
    expect(tryit).to_have_count(0)
    page.locator('.jp-SideBar [data-id="gpulab-workloads"]').click()
    row = page.locator('#gpulab-workloads .gpulab-wl-row[data-name="line"]')
    row.locator(".gpulab-wl-try").click()
    expect(tryit).to_have_attribute("data-state", "available")

    # Undeploy, confirmed: the panel says so, the hub has no such model
    tryit.get_by_role("button", name="Undeploy").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Undeploy").click()
    expect(tryit).to_have_attribute("data-state", "undeployed")
    expect(tryit.locator(".gpulab-try-message")).to_have_text(
        "line was undeployed: its model servers are stopped."
    )
    expect(send).to_be_disabled()
    assert user.session.get(hub.api("/gpulab/models/line"), timeout=30).status_code == 404
    shot(page, "7-undeployed")


def test_tensorboard_opens_from_the_launcher_on_the_file_browsers_folder(hub, page):
    user = hub.create_user("tb-lab")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    assert user.run(WRITE_RUN).strip() == "written"

    open_lab(page, hub, user)
    folder(page, "runs").dblclick()
    expect(page.locator(".jp-BreadCrumbs")).to_contain_text("runs")
    page.keyboard.press("Control+Shift+L")  # a new launcher, on the file browser's folder
    launcher = page.locator(".jp-Launcher:visible")
    card = launcher.locator(".jp-LauncherCard", has_text="TensorBoard")
    expect(card).to_be_visible()
    shot(page, "8-launcher")
    card.click()

    expect(page.locator(".lm-TabBar-tab", has_text="TensorBoard: runs")).to_be_visible()
    view = page.locator(".gpulab-TensorBoard")
    expect(view.locator(".gpulab-tb-status")).to_contain_text("TensorBoard")
    expect(view).to_have_attribute("data-state", "ready", timeout=90_000)
    expect(view.locator(".gpulab-tb-status")).to_have_text("TensorBoard on ~/runs")
    board = user.server_get("/gpulab/tensorboard").json()["tensorboards"]
    assert [b["logdir"] for b in board] == ["runs"], board
    expect(view.locator(".gpulab-tb-link")).to_have_attribute("href", board[0]["url"])

    # TensorBoard's own page in the frame, with the run's scalar
    frame = page.frame_locator(".gpulab-tb-frame iframe")
    expect(frame.get_by_text("loss").first).to_be_visible(timeout=60_000)
    shot(page, "9-tensorboard")

    # on a folder of the file browser, from its context menu: a TensorBoard of its own
    folder(page, "first").click(button="right")
    page.locator(".lm-Menu-item", has_text="Open TensorBoard here").click()
    expect(page.locator(".lm-TabBar-tab", has_text="TensorBoard: runs/first")).to_be_visible()
    expect(page.locator(".gpulab-TensorBoard:visible")).to_have_attribute(
        "data-state", "ready", timeout=90_000
    )
    boards = user.server_get("/gpulab/tensorboard").json()["tensorboards"]
    assert sorted(b["logdir"] for b in boards) == ["runs", "runs/first"], boards
