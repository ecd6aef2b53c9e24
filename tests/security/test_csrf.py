"""Issue 20, finding 7: a page on another site must not change accounts through an admin's
browser, and passwords must not be trivial.

The attacker runs a web page on a site of their own (``evil.test``, which Chromium resolves
to 127.0.0.1: a different site from the hub at ``127.0.0.1``) and gets the admin to open
it. The page tries every way a cross-site page can send the admin's browser to the hub's
account pages: an ``<img>`` (a cross-site sub-request), a link the admin clicks (a
top-level navigation) and a form that posts itself. After each, the account the page
aimed at is exactly as it was in the hub's database. The admin's own clicks on
/hub/authorize still approve, un-approve and discard.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from playwright.sync_api import expect

import browsing
from browsing import CHROMIUM_ARGS, login, sign_up
from hubfixture import wait_for

EVIL = "evil.test"
# the attacker's own site: another registrable domain, so another site than the hub's
ATTACK_ARGS = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"]

pytestmark = pytest.mark.timeout(240)

# -- the attacker's site --------------------------------------------------------------


class Site:
    """A tiny web server: pages by path, and the Sec-Fetch-Site of every request it got."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.fetch_site: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                site.fetch_site[self.path] = self.headers.get("Sec-Fetch-Site", "")
                body = site.pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = EVIL) -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def evil():
    site = Site()
    yield site
    site.close()


@pytest.fixture(scope="module")
def chromium():
    with browsing.chromium(ATTACK_ARGS) as instance:
        yield instance


@pytest.fixture(scope="module")
def admin_page(chromium, shared_hub):
    """The admin, logged in to the hub in their browser."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(shared_hub.url + "/hub/login")
    page.fill("#username_input", "admin")
    page.fill("#password_input", shared_hub.admin_password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)
    yield page
    context.close()


# -- the hub's side -------------------------------------------------------------------


def approval(hub, name: str):
    """The account's approval in the hub's database: True, False, or None when it is gone."""
    db = sqlite3.connect(f"file:{hub.data_root / 'jupyterhub.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT is_authorized FROM users_info WHERE username = ?", (name,)
        ).fetchone()
    finally:
        db.close()
    return None if row is None else bool(row[0])


def pending_user(hub, prefix: str) -> str:
    """A user who signed up and waits for the admin's approval."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    r = sign_up(hub, name, "pending-" + uuid.uuid4().hex)
    assert r.status_code == 200 and "Your information has been sent to the admin" in r.text
    assert approval(hub, name) is False
    return name


# -- the attacks ----------------------------------------------------------------------


def attack_page(kind: str, target: str) -> str:
    if kind == "img":
        return (
            f'<img src="{target}" onload="document.title=\'loaded\'"'
            " onerror=\"document.title='loaded'\">"
        )
    if kind == "link":
        return f'<a id="prize" href="{target}">You won a GPU: claim it</a>'
    # a form that posts itself, with what the hub's own buttons send but the token
    return (
        f'<form method="post" action="{target}">'
        '<input type="hidden" name="action" value="approve"></form>'
        "<script>document.forms[0].submit()</script>"
    )


@pytest.mark.parametrize("route", ["authorize", "discard"])
@pytest.mark.parametrize("kind", ["img", "link", "form-post"])
def test_a_page_on_another_site_changes_no_account(hub, evil, admin_page, kind, route):
    victim = pending_user(hub, "victim")
    target = f"{hub.url}/hub/{route}/{victim}"
    path = f"/{kind}-{route}-{victim}"
    evil.pages[path] = attack_page(kind, target)
    page = admin_page

    page.goto(evil.url(path))
    if kind == "img":
        expect(page).to_have_title("loaded")  # the browser made the request and got an answer
    elif kind == "link":
        page.click("#prize")
        page.wait_for_url(lambda url: url.startswith(hub.url))
        page.wait_for_load_state()
    else:
        page.wait_for_url(lambda url: url.startswith(hub.url))
        page.wait_for_load_state()

    assert approval(hub, victim) is False, f"a {kind} on {EVIL} changed {victim}'s account"
    # the admin is still logged in: the hub refused the request, not a stranger
    page.goto(hub.url + "/hub/authorize")
    expect(page.locator("h1")).to_have_text("Authorization area")


def test_the_attackers_site_is_another_site_for_the_browser(evil, admin_page, shared_hub):
    """Guards the test above: Chromium sends evil.test's sub-requests to 127.0.0.1 as
    cross-site (the hub is on 127.0.0.1, another port of it is the same site)."""
    evil.pages["/probe"] = "probe"
    evil.pages["/probe-from-evil"] = (
        f'<img src="{evil.url("/probe", host="127.0.0.1")}"'
        " onerror=\"document.title='done'\" onload=\"document.title='done'\">"
    )
    admin_page.goto(evil.url("/probe-from-evil"))
    expect(admin_page).to_have_title("done")
    assert evil.fetch_site["/probe"] == "cross-site"


def row(page, name: str):
    return page.locator("tr", has=page.locator("td", has_text=re.compile(f"^{name}$")))


def test_the_admins_own_clicks_still_approve_and_discard(hub, admin_page):
    approve, discard = pending_user(hub, "ann"), pending_user(hub, "dan")
    page = admin_page
    page.goto(hub.url + "/hub/authorize")

    row(page, approve).get_by_role("button", name="Authorize").click()
    wait_for(lambda: approval(hub, approve) is True, 15, "the admin's click to approve")
    expect(row(page, approve).get_by_role("button", name="Unauthorize")).to_be_visible()

    row(page, approve).get_by_role("button", name="Unauthorize").click()
    wait_for(lambda: approval(hub, approve) is False, 15, "the admin's click to un-approve")

    row(page, discard).get_by_role("button", name="Discard").click()
    wait_for(lambda: approval(hub, discard) is None, 15, "the admin's click to discard")
    expect(row(page, discard)).to_have_count(0)


def test_accounts_change_only_on_post_with_the_xsrf_token(hub):
    """The same rules for any client holding the admin's cookies (no browser needed)."""
    admin = login(hub, "admin", hub.admin_password)
    assert admin.login_status == 302, admin.login_page
    victim = pending_user(hub, "vic")
    for route in ("authorize", "discard"):
        r = admin.get(f"{hub.url}/hub/{route}/{victim}", allow_redirects=False, timeout=10)
        assert r.status_code == 405 and "POST" in r.headers.get("Allow", ""), r.status_code
        assert approval(hub, victim) is False
        r = admin.post(f"{hub.url}/hub/{route}/{victim}", data={"action": "approve"}, timeout=10)
        assert r.status_code == 403 and "_xsrf" in r.text
        assert approval(hub, victim) is False

    token = admin.cookies.get("_xsrf")
    r = admin.post(
        f"{hub.url}/hub/authorize/{victim}",
        data={"action": "approve", "_xsrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and approval(hub, victim) is True
    r = admin.post(
        f"{hub.url}/hub/authorize/nobody-{victim}",
        data={"action": "approve", "_xsrf": token},
        timeout=10,
    )
    assert r.status_code == 404 and "No account" in r.text


# -- cookies --------------------------------------------------------------------------


def set_cookies(response: requests.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.raw.headers.getlist("Set-Cookie")}


def is_lax(header: str) -> bool:
    return re.search(r"(?i);\s*samesite=lax\b", header) is not None


def test_the_hubs_cookies_are_samesite_lax(hub, chromium):
    r = requests.get(hub.url + "/hub/login", timeout=10)
    assert is_lax(set_cookies(r)["_xsrf"]), set_cookies(r)

    admin = login(hub, "admin", hub.admin_password)
    assert admin.login_status == 302, admin.login_page
    cookies = set_cookies(admin.login_response)
    assert {"jupyterhub-hub-login", "jupyterhub-session-id"} <= set(cookies), cookies
    for header in cookies.values():
        assert is_lax(header) and re.search(r"(?i);\s*httponly\b", header), header

    # a user logs in with their browser and opens their server (its OAuth with the hub
    # sets the server's own login cookie): every cookie set on the way is SameSite=Lax
    user = hub.create_user("cookie" + uuid.uuid4().hex[:4])
    password = "cookies-" + uuid.uuid4().hex
    assert "The signup was successful" in sign_up(hub, user.name, password).text
    assert user.spawn().status_code in (201, 202)
    context = chromium.new_context()
    responses = []
    try:
        page = context.new_page()
        page.on("response", lambda r: responses.append(r))  # redirects too: OAuth sets cookies
        page.goto(hub.url + "/hub/login")
        page.fill("#username_input", user.name)
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url(lambda url: "/hub/login" not in url)
        page.goto(f"{user.server_url}/lab")
        page.wait_for_url(re.compile(rf".*/user/{user.name}/lab"))
        page.wait_for_load_state()
        headers = [
            (response.url, h["value"])
            for response in responses
            if response.url.startswith(hub.url)
            for h in response.headers_array()
            if h["name"].lower() == "set-cookie"
        ]
    finally:
        context.close()
    cleared = re.compile(r'^[^=]+=(""|);')
    set_here = {h.split("=", 1)[0]: (url, h) for url, h in headers if not cleared.match(h)}
    assert f"jupyterhub-user-{user.name}" in set_here, sorted(set_here)
    for name, (url, header) in set_here.items():
        if name == "_xsrf" and f"/user/{user.name}/" in url:
            continue  # the user's own Jupyter server's token cookie, not a credential
        assert is_lax(header), (url, header)


# -- passwords ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "reason"),
    [("abc", "at least 8 characters"), ("iloveyou", "too common")],
)
def test_sign_up_refuses_weak_passwords_and_says_why(hub, password, reason):
    name = "weak" + uuid.uuid4().hex[:6]
    r = sign_up(hub, name, password)
    assert r.status_code == 400 and reason in r.text, (r.status_code, r.text[-2000:])
    assert approval(hub, name) is None


def test_a_weak_admin_password_is_refused_at_start(make_hub):
    hub = make_hub({"hub": {"admin_password": "abc"}, "gpus": {"ids": ["0"]}})
    assert hub.launch().wait(60) != 0, "the hub started with the admin password 'abc'"
    log = hub.log_tail(200)
    assert "hub.admin_password" in log and "at least 8 characters" in log, log
    assert "Traceback" not in log, log


def test_a_link_does_not_start_a_server(hub):
    """JupyterHub starts a server on ``GET /hub/spawn?profile=...``: a link on another
    site would take GPUs for whoever opens it (or, opened by an admin, for anyone)."""
    admin = login(hub, "admin", hub.admin_password)
    assert admin.login_status == 302, admin.login_page
    hub.create_user("linked")
    for path in (
        "/hub/spawn?profile=gpu-1",
        "/hub/spawn/linked?profile=gpu-1",
        "/hub/spawn?opt-profile=gpu-1",
    ):
        r = admin.get(hub.url + path, timeout=30)
        assert r.status_code == 400, (path, r.status_code)
        assert "A link does not start a server" in r.text
        # the form offers the linked profile, for the user to start by pressing Start
        assert re.search(r'value="gpu-1"\s+checked', r.text), r.text
    users = hub.admin.get(hub.api("/users"), timeout=10).json()
    assert not [u["name"] for u in users if u["servers"]]
    assert hub.gpus()["free"] == hub.gpus()["total"]
