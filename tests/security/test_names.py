"""Two hub names never share a unix account, a home, a bucket or a Kubernetes name.

gpulab derives the names of a user's things (unix account ``gl-<name>``, home
``homes/<name>``, RGW user and bucket ``gpulab-<name>``, Kubernetes claim, secret and pod
names) from the hub user name. A derived name that had to be cleaned ends with a short
hash, so it is something another person can type, or brute-force: ``safe_name("data.team")``
is ``data-team-78209d``, the literal name of anyone who signs up as ``data-team-78209d``;
``data~team@!@@.@~~.@.`` (found in 12 s of hashing) hashes to it too.

The end-to-end test acts as that second person on a real hub; the property tests check
the map from hub names to derived names over adversarial names, claimed in order.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid

from hypothesis import example, given, settings
from hypothesis import strategies as st
from kubespawner.slugs import safe_slug

from gpulab.hub import names as n
from gpulab.hub.names import (
    NameConflict,
    NameRegistry,
    bucket_name,
    home_name,
    legacy_safe_name,
    registry,
    safe_name,
)
from hubfixture import wait_for

VICTIM = "data.team"
LOOKALIKE = "data-team-78209d"
"""What ``safe_name(VICTIM)`` was (and is): typed as a name of its own."""
BRUTE_FORCED = "data~team@!@@.@~~.@."
"""A second name whose 6-hex hash equals VICTIM's (same cleaned form ``data-team``)."""

WHO_AM_I = """
import json, os
print(json.dumps({"uid": os.getuid(), "home": os.path.expanduser("~")}))
"""

READ_SECRET = """
import os
for path in ({victim_home!r} + "/secret.txt", os.path.expanduser("~/secret.txt")):
    try:
        print(open(path).read())
    except OSError as e:
        print("refused", path, type(e).__name__)
"""


def test_a_second_name_with_the_same_derived_name_gets_nothing_of_the_first(hub):
    victim = hub.create_user(VICTIM)
    assert victim.spawn(profile="cpu").status_code in (201, 202)
    secret = uuid.uuid4().hex
    victim.run(
        "import os\n"
        f"open(os.path.expanduser('~/secret.txt'), 'w').write({secret!r})\n"
        "os.chmod(os.path.expanduser('~/secret.txt'), 0o600)\n"
    )
    me = json.loads(victim.run(WHO_AM_I))

    # the lookalike types the victim's derived name, by the old rule and by today's
    lookalikes = sorted({LOOKALIKE, safe_name(VICTIM)})
    seen = []
    for name in lookalikes:
        attacker = hub.create_user(name)
        r = attacker.spawn(profile="cpu")
        assert r.status_code in (201, 202), f"{name} could not start a server: {r.text}"
        them = json.loads(attacker.run(WHO_AM_I))
        out = attacker.run(READ_SECRET.format(victim_home=me["home"]))
        attacker.stop()
        alive = victim.model()["servers"].get("", {}).get("ready", False)
        try:
            victim_answers = victim.run("print('alive')", timeout=20) == "alive\n"
        except Exception as e:  # the victim's server is gone: its kernel API is unreachable
            victim_answers = f"no: {e!r}"[:200]
        seen.append(
            {
                "attacker": name,
                "same uid": them["uid"] == me["uid"],
                "same home": them["home"] == me["home"],
                "read the secret": secret in out,
                "victim alive after attacker's stop": alive and victim_answers is True,
            }
        )
    assert all(
        not s["same uid"]
        and not s["same home"]
        and not s["read the secret"]
        and s["victim alive after attacker's stop"]
        for s in seen
    ), json.dumps(seen)

    # a name whose hash was brute-forced onto the victim's derived name is refused
    attacker = hub.create_user(BRUTE_FORCED)
    r = attacker.spawn(profile="cpu")
    assert r.status_code == 409, f"{BRUTE_FORCED!r} spawned ({r.status_code}): {r.text}"
    message = r.json()["message"]
    assert LOOKALIKE in message and "another hub user" in message, message
    # and its failed start (the hub stops what it began) left the victim running
    wait_for(lambda: not attacker.model()["servers"], 30, "the refused server to be gone")
    assert victim.run("print('alive')") == "alive\n"
    assert secret in victim.run(
        "print(open(__import__('os').path.expanduser('~/secret.txt')).read())"
    )


# -- the map from hub names to derived names, over adversarial names ----------------------


def derived_names(names: NameRegistry, name: str) -> dict[str, str]:
    """Every name the hub derives for ``name``, claimed as the hub claims them (in the
    order a spawn does: S3, then the kubernetes objects or the unix account and home)."""
    slug = safe_slug(name, max_length=48)  # KubeSpawner's {username}, its default scheme
    rgw = names.name_for(n.RGW_USER, name, lambda u: bucket_name("", u))
    out = {
        n.RGW_USER: f"gpulab-{rgw}",
        n.BUCKET: names.name_for(n.BUCKET, name, lambda u: bucket_name("gpulab-", u)),
        n.K8S_PVC: f"home-{slug}",
        n.K8S_SECRET: f"gpulab-s3-{slug}",
        n.K8S_POD: f"jupyter-{slug}",
    }
    for kind in (n.K8S_PVC, n.K8S_SECRET, n.K8S_POD):
        names.claim(kind, name, out[kind])
    out[n.HOME] = "gl-" + names.name_for(n.HOME, name, safe_name, legacy_safe_name)
    return out


def lookalikes(name: str) -> list[str]:
    """What an attacker types to land on ``name``'s things: its derived forms."""
    return [safe_name(name), legacy_safe_name(name), bucket_name("", name),
            safe_slug(name, max_length=48), name.upper(), name + "-" + "0" * 6]  # fmt: skip


NAME_PARTS = "aAzZ09_-.@~! /\u00e9\u0130\u212a\u00df\U0001f600"
"""Case, punctuation, characters whose lower() changes length or script (İ, K-sign, ß)."""

adversarial_names = st.one_of(
    st.text(min_size=1, max_size=30),  # any unicode
    st.text(st.sampled_from(NAME_PARTS), min_size=1, max_size=30),
    st.text(st.sampled_from("ab-"), min_size=15, max_size=90),  # long: truncated, hashed
    st.from_regex(r"[a-z]{1,12}-[0-9a-f]{6,8}", fullmatch=True),  # looks hashed
)


@st.composite
def claim_orders(draw) -> list[str]:
    """Distinct hub names in the order they are first used, each maybe followed (or
    preceded) by an attacker's lookalikes of it."""
    out: list[str] = []
    for name in draw(st.lists(adversarial_names, min_size=1, max_size=5)):
        group = [name]
        if draw(st.booleans()):
            group += draw(st.lists(st.sampled_from(lookalikes(name)), max_size=3))
        if draw(st.booleans()):
            group.reverse()  # the attacker came first: squatting
        out += [g for g in group if g not in out]
    return out


def check_never_shared(order: list[str]) -> dict[str, dict[str, str] | str]:
    """Claim ``order`` in a fresh registry; each name's names, or why it was refused.
    Fails if two names got one derived name of any kind."""
    names = NameRegistry("sqlite://")
    got: dict[str, dict[str, str] | str] = {}
    owners: dict[tuple[str, str], str] = {}
    for name in order:
        try:
            got[name] = derived_names(names, name)
        except NameConflict as e:
            got[name] = str(e)
            continue
        for kind, derived in got[name].items():
            first = owners.setdefault((kind, derived), name)
            assert first == name, f"{name!r} and {first!r} share the {kind} name {derived!r}"
    # every name that was given its names keeps them (a claim is for good)
    for name, mine in got.items():
        if isinstance(mine, dict):
            assert derived_names(names, name) == mine
    return got


@settings(max_examples=200, deadline=None)
@given(claim_orders())
@example([VICTIM, LOOKALIKE, BRUTE_FORCED])
@example([BRUTE_FORCED, VICTIM, LOOKALIKE])
@example(["Data.Team", "data.team", "DATA.TEAM", "data-team"])
def test_no_two_hub_names_share_a_derived_name(order):
    check_never_shared(order)


def test_the_brute_forced_name_is_refused_and_the_lookalike_gets_its_own():
    assert safe_name(BRUTE_FORCED) == safe_name(VICTIM) == LOOKALIKE  # the collision is real
    got = check_never_shared([VICTIM, LOOKALIKE, BRUTE_FORCED])
    assert got[VICTIM]["home"] == f"gl-{LOOKALIKE}"  # existing names do not move
    assert got[LOOKALIKE]["home"] not in (f"gl-{LOOKALIKE}", got[VICTIM]["home"])
    assert "another hub user" in got[BRUTE_FORCED] and LOOKALIKE in got[BRUTE_FORCED]


@given(st.text(min_size=1, max_size=60))
def test_a_typed_name_never_has_the_form_of_a_hashed_one(name):
    derived = safe_name(name)
    assert re.fullmatch(r"[a-z0-9_-]{1,20}", derived)
    assert (derived == name) != bool(re.search(r"-[0-9a-f]{6}$", derived))
    bucket = bucket_name("gpulab-", name)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket)
    assert (bucket == "gpulab-" + name) != bool(re.search(r"-[0-9a-f]{8}$", bucket))


def test_existing_users_keep_their_names_oldest_first(tmp_path):
    """An installation from before the registry: its hub users get the names they had,
    in order of creation; of two that shared one, the older keeps it, and nobody's home
    moves but the younger sharer's."""
    with sqlite3.connect(tmp_path / "jupyterhub.sqlite") as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, created DATETIME)")
        users = [("build-abc123", "2025-01-01"), (VICTIM, "2025-02-01"), (LOOKALIKE, "2025-03-01")]
        db.executemany("INSERT INTO users (name, created) VALUES (?, ?)", users)
    # first use: a name that looks hashed, from before that was hashed, keeps its home
    assert home_name(tmp_path, "build-abc123") == "build-abc123" != safe_name("build-abc123")
    assert home_name(tmp_path, VICTIM) == LOOKALIKE == legacy_safe_name(VICTIM)
    assert home_name(tmp_path, LOOKALIKE) == safe_name(LOOKALIKE) != LOOKALIKE
    assert registry(tmp_path).owner(n.HOME, LOOKALIKE) == VICTIM
    assert (tmp_path / "gpulab.sqlite").stat().st_mode & 0o077 == 0  # the hub's eyes only
    # a hub user made after the first use is named by today's rule, and refused a taken name
    try:
        home_name(tmp_path, BRUTE_FORCED)
    except NameConflict as e:
        assert e.status == 409 and LOOKALIKE in str(e)
    else:
        raise AssertionError(f"{BRUTE_FORCED!r} was given {VICTIM!r}'s home")
