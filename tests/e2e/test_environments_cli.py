"""The ``gpulab env`` commands and the Python client's environment methods, run as a user
runs them (the CLI as a subprocess with GPULAB_URL / GPULAB_TOKEN) against a real hub,
its registry and a real kernel that installed a package."""

from __future__ import annotations

import base64
import re

from gpulab.hub.client import GpulabClient
from hubfixture import cells, gpulab, lines_with, open_notebook, run, tiny_wheel

INSTALL = f"""
import base64, os, subprocess
open("gpulabprobe-1.0-py3-none-any.whl", "wb").write(base64.b64decode({base64.b64encode(tiny_wheel()).decode()!r}))
r = subprocess.run(["pip", "install", "--user", "--no-index", "--no-deps",
                    "gpulabprobe-1.0-py3-none-any.whl"], capture_output=True, text=True)
# data that does not compress, so that packing and pushing take a moment to watch
os.makedirs(os.path.expanduser("~/.local/share/probe"), exist_ok=True)
open(os.path.expanduser("~/.local/share/probe/blob"), "wb").write(os.urandom(16 << 20))
print(r.returncode, r.stderr[-300:])
"""
STAGE = re.compile(
    r"Environment probe: (Packing your packages(: [\d.]+ [KM]iB)?"
    r"|Pushing [\d.]+ [KM]iB to the registry)"
)


def test_save_list_show_share_delete_from_the_command_line(hub):
    alice = hub.create_user("alice", groups=("vision",))
    bob = hub.create_user("bob", groups=("vision",))
    alice.spawn(profile="cpu")
    assert alice.run(INSTALL).startswith("0 ")

    out = gpulab(hub, alice.token, "env", "save", "probe", "-d", "the probe")
    assert out.returncode == 0, (out.stdout, out.stderr)
    # progress on stderr, a line per change (not a terminal): from the record's first message
    # through what the save is at; the verdict on stdout
    progress = out.stderr.splitlines()
    assert progress[0] == "Environment probe: Saving", out.stderr
    assert len(progress) >= 2 and all(STAGE.fullmatch(line) for line in progress[1:]), out.stderr
    saved, detail = out.stdout.splitlines()
    assert re.fullmatch(
        r"Saved environment probe: gpulab/environments/alice@sha256:[0-9a-f]{64}", saved
    )
    assert detail.strip() == "1 package(s) over the base"

    out = gpulab(hub, alice.token, "env", "list")
    assert out.returncode == 0, out.stderr
    assert "Environments (1)" in out.stdout
    (row,) = lines_with(out.stdout, "probe")
    name, state, size, packages, python, shared, created = cells(row)
    assert (name, state, packages, python, shared) == ("probe", "ready", "1", "3.11", "-")
    assert re.fullmatch(r"1[67]\.\d MiB", size) and created.endswith("s ago"), row

    out = gpulab(hub, alice.token, "env", "show", "probe")
    assert out.returncode == 0, out.stderr
    shown = [line.rstrip() for line in out.stdout.splitlines()]
    assert "environment  alice/probe" in shown and "description  the probe" in shown
    assert "state        ready" in shown and "python       3.11" in shown
    assert "shared with  no group" in shown and "layers       1" in shown
    assert any(
        re.fullmatch(r"image {8}gpulab/environments/alice@sha256:[0-9a-f]{64}", s) for s in shown
    )
    assert shown[-2:] == ["Packages it adds over the base (1):", "  gpulabprobe==1.0"]

    # the hub's refusals: its message on stderr, exit 1
    out = gpulab(hub, alice.token, "env", "save", "probe")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "gpulab: 409: you already have an environment named probe" in out.stderr
    out = gpulab(hub, alice.token, "env", "save", "Bad Name")
    assert out.returncode == 1 and "400: name must be" in out.stderr, out.stderr
    out = gpulab(hub, alice.token, "env", "share", "probe", "staff")
    assert out.returncode == 1 and "only share with groups you are in" in out.stderr
    # bad usage: argparse's exit 2
    assert gpulab(hub, alice.token, "env", "share", "probe").returncode == 2
    assert gpulab(hub, alice.token, "env", "save").returncode == 2

    # shared with alice's group: bob sees it by its reference; unshared, he does not
    out = gpulab(hub, alice.token, "env", "share", "probe", "vision")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "Shared environment probe with vision: their members start servers from it as alice/probe"
    )
    out = gpulab(hub, bob.token, "env", "list")
    assert out.returncode == 0, out.stderr
    (row,) = lines_with(out.stdout, "probe")
    assert cells(row)[:2] == ["alice/probe", "ready"] and cells(row)[5] == "vision"
    out = gpulab(hub, alice.token, "env", "share", "probe", "--none")
    assert out.stdout.strip() == "Environment probe is shared with no group", out.stderr
    out = gpulab(hub, bob.token, "env", "list")
    assert out.stdout.startswith("No environments yet"), out.stdout

    out = gpulab(hub, alice.token, "env", "delete", "probe")
    assert out.returncode == 0 and out.stdout.strip() == "Deleted environment probe"
    out = gpulab(hub, alice.token, "env", "show", "probe")
    assert out.returncode == 1 and "404: alice has no environment named probe" in out.stderr
    assert gpulab(hub, alice.token, "env", "list").stdout.startswith("No environments yet")


def test_no_wait_then_the_client_follows_and_a_failed_save_exits_1(hub):
    alice = hub.create_user("alice", groups=("vision",))
    alice.spawn(profile="cpu")
    out = gpulab(hub, alice.token, "env", "save", "later", "--share", "vision", "--no-wait")
    assert out.returncode == 0 and out.stdout.strip() == "Saving environment later", out.stderr
    client = GpulabClient(f"{hub.url}/hub/api", alice.token)
    seen = []
    env = client.wait_environment("later", on_change=lambda e: seen.append(e["message"]))
    assert env["state"] == "ready" and env["groups"] == ["vision"], env
    assert seen[-1] == env["message"] and len(seen) == len(set(seen)), seen
    assert [e["ref"] for e in client.environments()] == ["alice/later"]
    client.delete_environment("later")
    assert client.environments() == []

    # the hub never follows a link in the home: ~/.local as one fails the save, with why
    # (one kernel throughout: a new one would want its connection file under ~/.local)
    kernel = open_notebook(alice, "swap.ipynb")
    run(alice, kernel, "import os; p = os.path.expanduser('~/.local'); os.rename(p, p + '.kept')")
    run(alice, kernel, "os.symlink('/etc', p)")
    try:
        out = gpulab(hub, alice.token, "env", "save", "linked")
    finally:
        run(alice, kernel, "os.remove(p); os.rename(p + '.kept', p)")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "gpulab: environment linked failed: " in out.stderr
    assert "'.local'" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
    assert client.environment("linked")["state"] == "failed"
    client.delete_environment("linked")
