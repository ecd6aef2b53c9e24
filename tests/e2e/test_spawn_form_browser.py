"""The spawn form in a real browser: while it is open, it follows the GPU pool.

Debian's Chromium, driven by Playwright, logs in as a user and opens /hub/spawn; other
users' servers take GPUs, wait in the queue for one and give theirs back, and the open
form's status line and its marks on profiles change without a reload. A read that fails
says so in the status line; a hidden page asks the hub nothing; with JavaScript off the
form shows what the hub rendered and still starts a server. Screenshots go to
``tests/artifacts/``.
"""

import re
import uuid

import pytest
from playwright.sync_api import expect

import browsing
from browsing import log_in
from hubfixture import wait_for

pytestmark = pytest.mark.timeout(240)

GPU_STATUS = re.compile(r"/hub/api/gpulab/gpu\?")
"""The requests the form's script makes: the server's GPU status."""


@pytest.fixture
def browser():
    with browsing.chromium() as browser:
        yield browser


def named(*names: str) -> list[str]:
    """Names of users no other test of the module's hub has signed up."""
    tag = uuid.uuid4().hex[:6]
    return [f"{name}-{tag}" for name in names]


def open_form(browser, hub, name: str, javascript: bool = True):
    """A page of ``name``, logged in, on the spawn form."""
    context = browser.new_context(
        java_script_enabled=javascript, viewport={"width": 1200, "height": 900}
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    log_in(page, hub, name)
    page.goto(hub.url + "/hub/spawn")
    return page


def profile_row(page, slug: str):
    return page.locator(".gpulab-profile").filter(has=page.locator(f'input[value="{slug}"]'))


def set_visibility(page, state: str) -> None:
    """Tell the page it is hidden or visible again, as a browser does when its tab goes to
    the background (a headless Chromium never hides a page itself)."""
    page.evaluate(
        """state => {
          Object.defineProperty(document, "visibilityState", {configurable: true, value: state});
          document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


def test_the_open_form_follows_gpus_taken_queued_for_and_returned(hub, browser):
    viewer, taker, other, waiter = named("vera", "walt", "xena", "yuri")
    hub.create_user(viewer)
    walt, xena, yuri = (hub.create_user(n) for n in (taker, other, waiter))
    page = open_form(browser, hub, viewer)
    page.evaluate("window.gpulabSameDocument = true")  # gone if the page reloads

    free = page.locator(".gpulab-gpu-status .gpulab-free")
    line = page.locator(".gpulab-gpu-status")
    one, two = profile_row(page, "gpu-1"), profile_row(page, "gpu-2")
    expect(free).to_have_text("3 of 3 GPUs free")
    expect(one).to_have_text(re.compile(r"^\s*1 GPU\s*$"))
    expect(two).not_to_have_class(re.compile("gpulab-unavailable"))
    # the test hub's GPUs are configured ids: no model or memory is known, none is shown
    expect(page.locator(".gpulab-gpu-models")).to_have_count(0)

    # another user's server takes two GPUs: "2 GPUs" is marked, "1 GPU" is not
    assert walt.spawn(profile="gpu-2").status_code in (201, 202)
    expect(free).to_have_text("1 of 3 GPUs free")
    expect(two).to_have_class(re.compile("gpulab-unavailable"))
    expect(two).to_contain_text("2 GPUs · not enough free now")
    expect(one).not_to_have_class(re.compile("gpulab-unavailable"))
    browsing.screenshot(page, "spawn-form-1-one-free")

    # the last one, then a CPU server asks for a GPU: the queue shows
    assert xena.spawn(wait=False, profile="gpu-1").status_code in (201, 202)
    assert yuri.spawn(wait=False, profile="cpu").status_code in (201, 202)
    expect(free).to_have_text("0 of 3 GPUs free")
    expect(one).to_contain_text("1 GPU · not enough free now")
    xena.wait_ready()
    yuri.wait_ready()
    r = yuri.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=30)
    assert r.status_code == 202, r.text
    expect(line).to_have_text(re.compile(r"0 of 3 GPUs free · 1 request waiting for GPUs\s*$"))
    browsing.screenshot(page, "spawn-form-2-queue")

    # two come back; the request waiting takes one, and one stays free
    walt.stop()
    wait_for(lambda: waiter in hub.holders().values(), 60, f"{waiter} to get the GPU")
    expect(line).to_have_text(re.compile(r"^\s*1 of 3 GPUs free\s*$"))
    expect(one).not_to_have_class(re.compile("gpulab-unavailable"))
    expect(one).to_have_text(re.compile(r"^\s*1 GPU\s*$"))
    expect(two).to_contain_text("2 GPUs · not enough free now")
    assert page.evaluate("window.gpulabSameDocument") is True
    browsing.screenshot(page, "spawn-form-3-returned")


def test_a_failed_read_says_the_availability_is_not_current_until_one_succeeds(hub, browser):
    (viewer,) = named("wren")
    hub.create_user(viewer)
    context = browser.new_context()
    page = context.new_page()
    log_in(page, hub, viewer)
    page.route(GPU_STATUS, lambda route: route.abort())  # the hub out of reach
    page.goto(hub.url + "/hub/spawn")
    line = page.locator(".gpulab-gpu-status")
    expect(line).to_have_text(re.compile(r"3 of 3 GPUs free · availability not current\s*$"))
    browsing.screenshot(page, "spawn-form-not-current")

    page.unroute(GPU_STATUS)
    expect(line).to_have_text(re.compile(r"^\s*3 of 3 GPUs free\s*$"))


def test_a_hidden_form_asks_the_hub_nothing_and_catches_up_when_shown(hub, browser):
    viewer, taker = named("zane", "abby")
    hub.create_user(viewer)
    abby = hub.create_user(taker)
    page = browser.new_context().new_page()
    log_in(page, hub, viewer)
    asked = []
    page.on("request", lambda r: asked.append(r.url) if GPU_STATUS.search(r.url) else None)
    # once the page has read the pool, its script waits on the hub for the next change
    with page.expect_request(lambda r: GPU_STATUS.search(r.url) and "etag=" in r.url):
        page.goto(hub.url + "/hub/spawn")
    free = page.locator(".gpulab-gpu-status .gpulab-free")
    expect(free).to_have_text("3 of 3 GPUs free")

    # hidden, it drops the request waiting, and asks nothing while the pool changes
    with page.expect_event("requestfailed", lambda r: GPU_STATUS.search(r.url)):
        set_visibility(page, "hidden")
    before = len(asked)
    assert abby.spawn(profile="gpu-1").status_code in (201, 202)
    page.evaluate("1")  # the browser's events up to now have come in
    assert asked[before:] == []
    expect(free).to_have_text("3 of 3 GPUs free")

    # shown again, it reads the pool at once (not after the next change)
    set_visibility(page, "visible")
    expect(free).to_have_text("2 of 3 GPUs free")
    assert "etag=" not in asked[before]


def test_without_javascript_the_form_shows_what_the_hub_rendered_and_starts_a_server(hub, browser):
    viewer, taker = named("cleo", "dora")
    hub.create_user(viewer)
    dora = hub.create_user(taker)
    assert dora.spawn(profile="gpu-2").status_code in (201, 202)
    page = open_form(browser, hub, viewer, javascript=False)
    expect(page.locator(".gpulab-gpu-status")).to_have_text(re.compile(r"^\s*1 of 3 GPUs free\s*$"))
    expect(profile_row(page, "gpu-2")).to_contain_text("2 GPUs · not enough free now")

    profile_row(page, "gpu-1").click()
    page.get_by_role("button", name="Start").click()
    wait_for(lambda: viewer in hub.holders().values(), 60, f"{viewer}'s server to hold a GPU")
