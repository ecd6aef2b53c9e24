"""Save environment… in a real browser (Debian's Chromium through Playwright, a real hub,
server, kernel and registry): a user installs a package with ``pip install --user`` from
a kernel, runs Save environment… from JupyterLab's command palette, and the dialog's
status line follows the save until the snapshot is ready; the Workloads panel lists it
with the package it adds, and deletes it once the user confirmed. A name the hub would
refuse is said under the field, and nothing is sent. Screenshots go to
``tests/artifacts/``.
"""

import re

import pytest
from playwright.sync_api import expect
from test_environments import INSTALL_PROBE

import browsing
from browsing import log_in, open_palette

pytestmark = pytest.mark.timeout(180)

NAME = "probe-lab"


def shot(page, name: str) -> None:
    browsing.screenshot(page, f"lab-environments-{name}")


def environments(user) -> list[dict]:
    r = user.session.get(user.hub.api("/gpulab/environments"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["environments"]


def test_save_an_environment_from_the_lab_see_its_packages_and_delete_it(hub, page):
    user = hub.create_user("edna")
    assert user.spawn(profile="cpu").status_code in (201, 202)
    assert user.run(INSTALL_PROBE).startswith("0 ")
    sent = []  # what the page asked the server to save
    page.on(
        "request",
        lambda r: (
            sent.append(r.url)
            if r.method == "POST" and "gpulab/hub/environments" in r.url
            else None
        ),
    )

    log_in(page, hub, "edna")
    page.goto(user.server_url + "/lab")
    open_palette(page).fill("Save environment")
    page.locator(".lm-CommandPalette-item", has_text="Save environment…").click()
    dialog = page.locator(".jp-Dialog", has=page.locator(".gpulab-EnvForm"))
    expect(dialog).to_be_visible()
    name = dialog.locator(".gpulab-env-name")
    problem = dialog.locator('.gpulab-env-problem[data-field="name"]')
    save = dialog.locator(".jp-Dialog-footer .gpulab-env-save")
    status = dialog.get_by_role("status")
    expect(name).to_be_focused()

    # the status line's every text, to see it move
    dialog.evaluate(
        """node => {
          const line = node.querySelector('[role="status"]');
          window.gpulabSaid = [];
          new MutationObserver(() => window.gpulabSaid.push(line.textContent)).observe(
            line, { childList: true, characterData: true, subtree: true });
        }"""
    )
    name.fill(NAME)
    dialog.locator(".gpulab-env-description").fill("the probe, from the lab")
    expect(problem).to_be_empty()
    save.click()
    saved = (
        f"Saved environment {NAME}: 1 package(s) over the base. Start a server from it "
        "from the hub’s spawn page (Environment)."
    )
    expect(status).to_have_text(saved, timeout=60_000)
    said = page.evaluate("window.gpulabSaid")
    assert said[0] == f"Saving environment {NAME}…" and said[-1] == saved, said
    assert all(s.startswith(f"Saving environment {NAME}") for s in said[:-1]), said
    expect(save).to_be_hidden()
    shot(page, "1-saved")
    assert len(sent) == 1, sent
    (env,) = environments(user)
    assert (env["name"], env["state"], env["description"]) == (
        NAME,
        "ready",
        "the probe, from the lab",
    )
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    # the panel lists it: ready, its size, the package it adds
    page.locator('.jp-SideBar [data-id="gpulab-workloads"]').click()
    panel = page.locator("#gpulab-workloads")
    row = panel.locator(f'[data-kind="environments"] .gpulab-wl-row[data-name="{NAME}"]')
    expect(row).to_have_attribute("data-state", "ready")
    expect(row.locator(".gpulab-wl-summary")).to_have_text(
        re.compile(r"^\d+\.\d (KiB|MiB) · 1 package · (just now|\d+ min ago)$")
    )
    row.locator(".gpulab-wl-name").click()
    expect(row.locator(".gpulab-wl-package")).to_have_text(["gpulabprobe==1.0"])
    expect(row.locator(".gpulab-wl-image")).to_have_text(f"Image {env['image']}")
    shot(page, "2-in-the-panel")

    # Delete asks first; then it is gone, from the panel and the hub
    row.locator(".gpulab-wl-delete").click()
    confirm = page.locator(".jp-Dialog")
    expect(confirm.locator(".jp-Dialog-header")).to_have_text(f"Delete environment {NAME}?")
    expect(confirm.locator(".jp-Dialog-body")).to_have_text(
        "Servers and jobs can no longer start from it."
    )
    shot(page, "3-delete-asks")
    confirm.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(panel.locator('[data-kind="environments"] .gpulab-wl-empty')).to_contain_text(
        "No environments saved"
    )
    assert environments(user) == []

    # from the panel's header: a name the hub would refuse is said, and nothing is sent
    panel.get_by_role("button", name="Save environment…").click()
    expect(dialog).to_be_visible()
    name.fill("my Probe")
    expect(problem).to_have_text(
        'Only lower-case letters, digits, ".", "_" and "-": not spaces, "P"'
    )
    expect(save).to_be_disabled()
    name.press("Enter")
    expect(problem).to_be_visible()
    expect(status).to_be_empty()
    shot(page, "4-bad-name")
    name.fill("")
    expect(problem).to_have_text(
        'Name the environment: lower-case letters, digits, ".", "_" or "-"'
    )
    assert len(sent) == 1, sent
    assert environments(user) == []
