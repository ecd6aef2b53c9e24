"""The admins' GPU page (/hub/gpulab/admin) in a real browser.

Debian's Chromium, driven by Playwright, logs in as an admin: the nav bar links to the
page and counts the accounts waiting for approval; the page shows who holds which GPU
and who waits in the queue, returns a server's GPUs with its Return GPU button (the
hub's ledger then has them free), and shows the period's usage by user, by group (a
group whose name is HTML, shown as text) and by day (a chart). A user who is not an
admin gets no link and a 403. Screenshots go to ``tests/artifacts/``.
"""

import re
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

import browsing
from browsing import log_in, sign_up
from hubfixture import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def browser():
    with browsing.chromium() as chromium:
        yield chromium


def new_page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(30_000)
    return page


def shot(page, name: str) -> None:
    browsing.screenshot(page, f"admin-{name}", full_page=True)


def test_an_admin_sees_the_pool_returns_a_gpu_and_reads_usage(hub, browser):
    tag = uuid.uuid4().hex[:6]
    boss, ada, newbie = f"boss-{tag}", f"ada-{tag}", f"newbie-{tag}"
    # a group name a user could have asked an admin for, which is HTML
    group = f'<img src=x onerror="window.pwned=1">{tag}'
    hub.create_user(boss, admin=True)
    user = hub.create_user(ada, groups=(quote(group, safe=""),))
    # ada holds two of the three GPUs; cy, on the CPU, waits for two
    cy = hub.create_user(f"cy-{tag}")
    started = datetime.now(UTC).date().isoformat()
    for who, profile in ((user, "gpu-2"), (cy, "cpu")):
        assert who.spawn(wait=False, profile=profile).status_code in (201, 202)
    for who in (user, cy):
        who.wait_ready()
    gpus = [g["id"] for g in hub.gpus()["gpus"] if g.get("user") == ada]
    assert len(gpus) == 2
    r = cy.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 2}, timeout=30)
    assert r.status_code == 202, r.text
    r = sign_up(hub, newbie, "pw-" + uuid.uuid4().hex)
    assert r.status_code == 200 and "Your information has been sent to the admin" in r.text

    page = new_page(browser)
    log_in(page, hub, boss)
    page.goto(hub.url + "/hub/home")
    expect(page.locator("#gpulab-signups-badge")).to_have_text("1")
    assert page.locator("#gpulab-signups-link").get_attribute("href") == "/hub/authorize"
    page.locator("#gpulab-admin-link").click()
    page.wait_for_url("**/hub/gpulab/admin")

    # the pool: ada holds the GPU, with her default server
    row = page.locator(f'#gpulab-pool-rows tr[data-gpu="{gpus[0]}"]')
    expect(row.locator(".gpulab-state")).to_have_text("held")
    expect(row.locator(".gpulab-user")).to_have_text(ada)
    expect(row.locator(".gpulab-holder")).to_have_text("default server")
    expect(page.locator("#gpulab-signups-list")).to_have_text(newbie)
    # the queue: cy, first, for one GPU
    waiting = page.locator("#gpulab-queue-rows tr")
    expect(waiting).to_have_count(1)
    expect(waiting.locator("td")).to_have_text(
        ["1", cy.name, "default server", "2", re.compile("s$")]
    )

    # usage: ada by user, her group by its name as text, a bar of the day she held it
    expect(page.locator("#gpulab-usage-users tbody")).to_contain_text(ada)
    groups = page.locator("#gpulab-usage-groups tbody")
    expect(groups).to_contain_text(group)
    expect(groups.locator("img")).to_have_count(0)
    bars = page.locator("#gpulab-usage-days rect.gpulab-bar-held")
    expect(bars.first).to_be_attached()
    heights = bars.evaluate_all("bars => bars.map(b => [b.dataset.day, +b.getAttribute('height')])")
    today = datetime.now(UTC).date().isoformat()
    assert today in [day for day, height in heights if height > 0]
    assert {day for day, height in heights if height > 0} <= {started, today}
    expect(
        page.locator(f'#gpulab-usage-days rect.gpulab-bar-busy[data-day="{today}"]')
    ).to_have_count(1)
    shot(page, "held")

    # cy stops waiting (else the GPUs returned would be hers), and the page follows
    assert cy.session.delete(hub.api("/gpulab/gpu/get"), timeout=30).status_code == 200
    expect(page.locator("#gpulab-queue-empty")).to_be_visible()
    expect(waiting).to_have_count(0)

    # Return GPU: the ledger has it free, and the page says so
    row.get_by_role("button", name="Return GPU").click()
    wait_for(lambda: ada not in hub.holders().values(), 60, f"{ada}'s GPUs to be free")
    assert hub.gpus()["free"] == 3
    expect(row.locator(".gpulab-state")).to_have_text("free")
    expect(row.locator(".gpulab-user")).to_have_text("")
    expect(page.locator("#gpulab-notices")).to_contain_text(f"{ada}'s default server")
    shot(page, "returned")
    assert page.evaluate("window.pwned") is None


def test_a_user_who_is_not_an_admin_gets_no_link_and_a_403(hub, browser):
    name = f"val-{uuid.uuid4().hex[:6]}"
    hub.create_user(name)
    page = new_page(browser)
    log_in(page, hub, name)
    page.goto(hub.url + "/hub/home")
    expect(page.locator("#logout")).to_be_visible()
    expect(page.locator("#gpulab-admin-link")).to_have_count(0)
    answer = page.goto(hub.url + "/hub/gpulab/admin")
    assert answer.status == 403
    expect(page.locator("body")).to_contain_text("The GPU admin page is for the hub's admins.")
    answer = page.goto(hub.url + "/hub/gpulab/admin/signups")
    assert answer.status == 403
