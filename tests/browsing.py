"""The hub's pages as a browser uses them, shared by the e2e and attack tests: a
requests session that signs up and logs in through the hub's forms (with their xsrf
token), and Debian's Chromium for Playwright."""

import contextlib
import os
import re
import uuid
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def chromium(args: list[str] = CHROMIUM_ARGS):
    """Debian's Chromium under Playwright (``args``: its command line), closed after;
    expectations wait up to 30 s, for a busy machine."""
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run scripts/install --test"
    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""Screenshots of the browser tests, for a person to look at (never committed)."""


def screenshot(page, name: str, full_page: bool = False) -> None:
    """Save what ``page`` shows as ``tests/artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def browser(hub) -> requests.Session:
    s = requests.Session()
    s.get(hub.url + "/hub/login", timeout=10)  # sets the _xsrf cookie
    return s


def login(hub, name: str, password: str) -> requests.Session:
    s = browser(hub)
    r = s.post(
        hub.url + "/hub/login",
        data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=10,
    )
    s.login_status, s.login_page = r.status_code, r.text
    s.login_response = r
    return s


def sign_up(hub, name: str, password: str) -> requests.Response:
    s = browser(hub)
    data = {
        "username": name,
        "signup_password": password,
        "signup_password_confirmation": password,
        "_xsrf": s.cookies.get("_xsrf"),
    }
    return s.post(hub.url + "/hub/signup", data=data, timeout=10)


def submit_form(s: requests.Session, page: requests.Response) -> requests.Response:
    """Submit the one form of a hub page (its hidden fields: xsrf, code, scopes) as a
    browser does when its button is pressed."""
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    return s.post(page.url, data=fields, timeout=30)


def accept_share(s: requests.Session, hub, link: str) -> requests.Response:
    """Follow a share link as a logged-in teammate: accept it, confirm opening the
    owner's server, and land where the link leads (the last answer)."""
    page = s.get(link if link.startswith("http") else hub.url + link, timeout=30)
    assert page.status_code == 200, page.text
    answer = submit_form(s, page)
    if "/hub/api/oauth2/authorize" in answer.url:  # "Open alice's server"
        answer = submit_form(s, answer)
    return answer


def log_in(page, hub, name: str) -> None:
    """In a Playwright ``page``: sign up (the admin added the user, so no approval is
    needed), then log in."""
    password = "pw-" + uuid.uuid4().hex
    page.goto(hub.url + "/hub/signup")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.fill("#password_confirmation_input", password)
    page.click("#signup_submit")
    expect(page.locator("body")).to_contain_text("The signup was successful")
    page.goto(hub.url + "/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)


def open_palette(page):
    """Open the command palette with its shortcut, as a user would; its search input.

    The shortcut only works once JupyterLab has restored its layout and registered its
    key bindings, which can come after the top bar shows: press it until the palette
    shows (checking first, since a second press closes it). Each press gets long to take
    effect: on a busy machine the browser holds key presses while it starts the lab, and
    a press sent again meanwhile would close the palette the first one opened.
    """
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=60_000)
    search = page.locator(".lm-CommandPalette-input")
    for _ in range(6):
        if search.is_visible():
            return search
        page.keyboard.press("Control+Shift+C")
        try:
            expect(search).to_be_visible(timeout=15_000)
        except AssertionError:
            continue
    expect(search).to_be_visible()
    return search
