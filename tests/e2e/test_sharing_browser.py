"""Two people in one notebook, in two real browsers (Debian's Chromium, two contexts):
the owner shares the notebook from JupyterLab's Share dialog, the teammate opens the
link, accepts, and lands in it; each sees the other's edits, cursor (with their hub
name) and cell outputs; a cut connection reconnects without duplicating anything; the
owner revokes the teammate, who is out at once, and then sees the notebook only through
a read-only link."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from playwright.sync_api import expect

import browsing
from browsing import log_in
from hubfixture import end_sharing, wait_for

pytestmark = pytest.mark.timeout(300)

NOTEBOOK = {
    "type": "notebook",
    "content": {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "cells": [
            {"cell_type": "code", "id": "first", "metadata": {}, "source": "",
             "outputs": [], "execution_count": None},
        ],
    },
}  # fmt: skip


@pytest.fixture
def chromium():
    with browsing.chromium() as browser:
        yield browser


@pytest.fixture(autouse=True)
def no_shares_left(hub):
    yield
    end_sharing(hub)


def person(chromium, hub, name: str):
    """A browser of its own (cookies and all) for ``name``, signed up and logged in."""
    page = chromium.new_context(viewport={"width": 1300, "height": 800}).new_page()
    page.set_default_timeout(30_000)
    log_in(page, hub, name)
    return page


def first_cell(page):
    return page.locator(".jp-Notebook .jp-Cell").first


def open_dialog(page):
    page.click("#gpulab-share-button")
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".gpulab-share-create")).to_be_visible()
    return dialog


def test_the_owner_shares_a_notebook_and_both_edit_it_live_until_revoked(hub, chromium):
    tag = uuid.uuid4().hex[:4]
    owner_name, guest_name = f"ann-{tag}", f"ben-{tag}"
    owner = hub.create_user(owner_name)
    hub.create_user(guest_name)
    assert owner.spawn().status_code in (201, 202)
    r = owner.session.put(owner.server_url + "/api/contents/shared.ipynb", json=NOTEBOOK)
    assert r.status_code in (200, 201), r.text

    ann = person(chromium, hub, owner_name)
    ann.goto(owner.server_url + "/lab/tree/shared.ipynb")
    expect(first_cell(ann)).to_be_visible(timeout=90_000)

    # the notebook's context menu: a link that opens this notebook
    first_cell(ann).click(button="right")
    ann.get_by_text("Share this notebook…").click()
    dialog = ann.locator(".jp-Dialog")
    expect(dialog).to_contain_text("they can run code")
    expect(dialog.locator(".gpulab-share-open-notebook")).to_be_checked()
    dialog.locator(".gpulab-share-uses").select_option(label="One person")
    dialog.locator(".gpulab-share-create").click()
    link = dialog.locator(".gpulab-share-url")
    expect(link).to_have_value(re.compile(r"/hub/accept-share\?code=.*&next="))
    url = link.input_value()
    dialog.get_by_role("button", name="Close").click()

    # the teammate follows it, accepts, and lands in the notebook (with their document
    # connections passed through this test, which cuts one below)
    ben = person(chromium, hub, guest_name)
    routes = []

    def keep(ws):
        routes.append(ws)
        ws.connect_to_server()

    ben.route_web_socket(re.compile(r"/api/collaboration/room/"), keep)
    ben.goto(url)
    expect(ben.locator("body")).to_contain_text(f"{owner_name} shared a server with you")
    ben.get_by_role("button", name="Accept and open").click()
    expect(ben.locator("body")).to_contain_text(f"Open {owner_name}'s server")
    ben.get_by_role("button", name="Open the server").click()
    ben.wait_for_url(re.compile(r"/lab/tree/shared\.ipynb"), timeout=90_000)
    expect(first_cell(ben)).to_be_visible(timeout=90_000)
    # the owner's buttons are not the guest's; one Share button (gpulab's) for the owner
    expect(ben.locator("#gpulab-share-button")).to_be_hidden()
    expect(ann.locator("#gpulab-share-button")).to_be_visible()
    collab_share = '[data-jp-item-name="@jupyter/collaboration:shared-link"]'
    expect(ann.locator(collab_share)).to_have_count(0)

    # each types into the same cell; each sees the other's text and cursor, named
    first_cell(ann).locator(".cm-content").click()
    ann.keyboard.type("shared = 'from ann'")
    expect(first_cell(ben)).to_contain_text("shared = 'from ann'")
    first_cell(ben).locator(".cm-content").click()
    ben.keyboard.press("Control+End")
    ben.keyboard.type("\nprint(shared.replace('ann', 'ben'))")
    expect(first_cell(ann)).to_contain_text("print(shared.replace('ann', 'ben'))")
    expect(ann.locator(".jp-remote-userFlag-name", has_text=guest_name)).to_have_count(1)
    expect(ben.locator(".jp-remote-userFlag-name", has_text=owner_name)).to_have_count(1)
    # and the name stays shown once its owner pauses (not only on hover)
    flag = ann.locator(".jp-remote-userFlag", has_text=guest_name)
    expect(flag).to_have_class(re.compile(r"\bjp-mod-idle\b"))
    settled = "async e => { await Promise.all(e.getAnimations().map(a => a.finished)); return getComputedStyle(e).opacity; }"
    assert float(flag.evaluate(settled)) >= 0.5

    # the guest runs the cell: its output shows for the owner too
    ben.keyboard.press("Shift+Enter")
    expect(first_cell(ann).locator(".jp-OutputArea")).to_contain_text("from ben", timeout=90_000)

    # the guest's connection to the document is cut while they add a cell: once it
    # reconnects, both see it once, and the same cells
    assert routes, "the document's websocket was not seen"
    routes[-1].close()
    first_cell(ben).locator(".jp-InputPrompt").click()  # command mode
    ben.keyboard.press("b")  # a cell below
    ben.keyboard.press("Enter")
    ben.keyboard.type("after_the_cut = 1")
    cells = ann.locator(".jp-Notebook .jp-Cell")
    expect(cells.filter(has_text="after_the_cut = 1")).to_have_count(1, timeout=60_000)
    expect(cells).to_have_count(ben.locator(".jp-Notebook .jp-Cell").count())

    # the owner revokes the guest: out at once
    dialog = open_dialog(ann)
    expect(dialog.locator(".gpulab-share-code")).to_contain_text("used 1 of 1 (used up)")
    guest = dialog.locator(f'.gpulab-share-guest[data-name="{guest_name}"]')
    expect(guest).to_be_visible()
    guest.locator(".gpulab-share-revoke").click()
    expect(dialog.locator(".gpulab-share-guest")).to_have_count(0)
    r = ben.request.get(owner.server_url + "/api/contents/shared.ipynb")
    assert r.status == 403, r.text()

    def saved_once() -> bool:  # the server saves the shared document itself
        r = owner.session.get(owner.server_url + "/api/contents/shared.ipynb", timeout=30)
        sources = [c["source"] for c in r.json()["content"]["cells"]]
        return json.dumps(sources).count("after_the_cut = 1") == 1

    wait_for(saved_once, 30, "the notebook saved with the guest's cell, once")

    # a read-only link to the notebook: the guest, out of the server now, sees it
    # rendered, following the owner's edits, and nothing of it runs
    dialog.get_by_role("button", name="Close").click()
    first_cell(ann).click(button="right")
    ann.get_by_text("Share this notebook…").click()
    dialog = ann.locator(".jp-Dialog")
    dialog.locator(".gpulab-share-create-view").click()
    view = dialog.locator(".gpulab-share-view-url")
    expect(view).to_have_value(re.compile(r"/hub/gpulab/view/"))
    ben.goto(view.input_value())
    rendered = ben.frame_locator("#gpulab-view-frame").locator("body")
    expect(rendered).to_contain_text("after_the_cut = 1", timeout=60_000)
    expect(ben.locator("#gpulab-view-status")).to_contain_text("follows the owner's edits")

    # the owner stops the server, a notebook still open in two browsers: it ends on its
    # own, at once (JupyterHub answers 202 "still stopping" after 10 s, as it did while
    # the collaboration's idle thread kept the process alive until SIGKILL)
    r = owner.session.delete(hub.api(f"/users/{owner_name}/server"), timeout=60)
    assert r.status_code == 204, r.text
