"""Home volumes on the local backend: resize, snapshots and rollback, who may act on whose
home, and the home quota (an ext4 image per home), enforced, grown online, rolled back."""

import os
import subprocess

from hubfixture import BIN, gpulab


def test_home_volume_resize_snapshots_and_rollback(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    api = hub.api("/gpulab/storage/volume")
    r = alice.session.get(api + "/snapshots", timeout=30)
    assert r.status_code == 404 and "first spawn" in r.json()["message"]

    alice.spawn(profile="cpu")
    alice.run("open('work.txt', 'w').write('version 1')")
    r = alice.session.post(api + "/snapshots", json={"name": "v1"}, timeout=60)
    assert r.status_code == 201 and r.json()["name"] == "v1", r.text
    assert (
        alice.session.post(api + "/snapshots", json={"name": "v1"}, timeout=60).status_code == 409
    )
    r = alice.session.post(api + "/snapshots", json={"name": "../x"}, timeout=60)
    assert r.status_code == 400 and "invalid snapshot name" in r.json()["message"]
    alice.run("open('work.txt', 'w').write('version 2'); open('new.txt', 'w').write('n')")

    # rolling back under a running server is refused; nothing changes
    r = alice.session.post(api + "/snapshots/v1/rollback", timeout=60)
    assert r.status_code == 409 and "stop them first" in r.json()["message"]
    alice.stop()
    r = alice.session.post(api + "/snapshots/v1/rollback", timeout=60)
    assert r.status_code == 200, r.text
    names = [
        s["name"] for s in alice.session.get(api + "/snapshots", timeout=30).json()["snapshots"]
    ]
    assert names[0] == "v1" and names[1].startswith("before-rollback-")
    alice.spawn(profile="cpu")
    out = alice.run(
        "import os; print(open('work.txt').read(), os.path.exists('new.txt'), os.stat('.').st_mode & 0o777)"
    )
    assert out.split() == ["version", "1", "False", "448"]  # 448 == 0o700

    # grow, never shrink; users up to the limit, admins beyond
    r = alice.session.post(api + "/resize", json={"size": "20GiB"}, timeout=30)
    assert r.status_code == 200 and r.json()["size_bytes"] == 20 * 2**30
    r = alice.session.post(api + "/resize", json={"size": "5GiB"}, timeout=30)
    assert r.status_code == 400 and "refusing to shrink" in r.json()["message"]
    r = alice.session.post(api + "/resize", json={"size": "1TiB"}, timeout=30)
    assert r.status_code == 403 and "at most 100.0 GiB" in r.json()["message"]
    r = hub.admin.post(api + "/resize?user=alice", json={"size": "1TiB"}, timeout=30)
    assert r.status_code == 200 and r.json()["size_bytes"] == 2**40
    r = alice.session.post(api + "/resize", json={"size": "lots"}, timeout=30)
    assert r.status_code == 400 and "expected a size" in r.json()["message"]
    r = alice.session.post(api + "/resize", data=b"not json", timeout=30)
    assert r.status_code == 400

    # others' homes are off limits; deleting snapshots
    assert (
        bob.session.post(api + "/snapshots?user=alice", json={"name": "x"}, timeout=30).status_code
        == 403
    )
    assert alice.session.delete(api + "/snapshots/nope", timeout=30).status_code == 404
    assert alice.session.delete(api + "/snapshots/v1", timeout=30).status_code == 204
    left = alice.session.get(api + "/snapshots", timeout=30).json()["snapshots"]
    assert [s["name"] for s in left] == names[1:]

    # the same through the CLI, with alice's own token
    env = {**hub.env, "GPULAB_TOKEN": alice.token, "COLUMNS": "200"}

    def cli(*args):
        return subprocess.run(
            [str(BIN / "gpulab"), "storage", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = cli("snapshot", "from-cli")
    assert out.returncode == 0 and "Snapshot from-cli made" in out.stdout, out.stderr
    out = cli("snapshots")
    assert "from-cli" in out.stdout and names[1] in out.stdout
    out = cli("resize")
    assert out.returncode == 2 and "give a size" in out.stderr
    out = cli("rollback", "from-cli")
    assert out.returncode == 1 and "stop them first" in out.stderr and "Traceback" not in out.stderr


def test_an_admin_user_acts_on_their_own_home_and_a_service_must_name_one(hub):
    boss = hub.create_user("boss", admin=True)
    boss.spawn(profile="cpu")
    r = boss.session.get(hub.api("/gpulab/storage"), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "boss" and r.json()["volume"] is not None
    out = gpulab(hub, boss.token, "storage", "snapshot", "mine")
    assert out.returncode == 0 and "Snapshot mine made" in out.stdout, out.stderr

    # the CLI service's token (root's on the hub machine) is no user's
    service = (hub.data_root / "cli-token").read_text().strip()
    r = hub.admin.get(hub.api("/gpulab/storage"), timeout=30)
    assert r.status_code == 400 and "?user=NAME" in r.json()["message"]
    for args in (("storage",), ("gpu", "return")):
        out = gpulab(hub, service, *args)
        assert out.returncode == 1 and "--user NAME" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = gpulab(hub, service, "storage", "snapshots", "--user", "boss")
    assert out.returncode == 0 and "mine" in out.stdout, out.stderr


def test_only_admins_delete_homes_with_confirmation(hub):
    carol = hub.create_user("carol")
    carol.spawn(profile="cpu")
    carol.run("open('keep.txt', 'w').write('precious')")
    api = hub.api("/gpulab/storage/volume")
    r = carol.session.delete(api + "?user=carol&confirm=carol", timeout=30)
    assert r.status_code == 403 and "Only admins" in r.json()["message"]
    r = hub.admin.delete(api + "?user=carol", timeout=30)
    assert r.status_code == 400 and "confirm=carol" in r.json()["message"]
    r = hub.admin.delete(api + "?user=carol&confirm=carol", timeout=30)
    assert r.status_code == 409 and "stop it first" in r.json()["message"]
    carol.stop()
    carol.session.post(api + "/snapshots", json={"name": "last"}, timeout=60)
    r = hub.admin.delete(api + "?user=carol&confirm=carol", timeout=30)
    assert r.status_code == 409 and "has snapshots (last)" in r.json()["message"]
    assert (hub.data_root / "homes" / "carol" / "keep.txt").read_text() == "precious"
    carol.session.delete(api + "/snapshots/last", timeout=30)
    assert hub.admin.delete(api + "?user=carol&confirm=carol", timeout=30).status_code == 204
    assert not (hub.data_root / "homes" / "carol").exists()
    assert hub.admin.get(hub.api("/gpulab/storage?user=carol"), timeout=30).json()["volume"] is None


FILL = """
import errno, os
written = 0
try:
    with open("filler.bin", "wb") as f:
        for _ in range({mib}):
            f.write(b"x" * 2**20)
            f.flush()
            os.fsync(f.fileno())
            written += 1
    print("wrote", written)
except OSError as e:
    print("refused", written, errno.errorcode[e.errno])
"""


def test_home_quota_is_enforced_grown_online_and_rolled_back(make_hub):
    hub = make_hub({"gpus": {"ids": ["0"]}, "storage": {"home_quota": True, "home_size": "64MiB"}})
    # a directory home an earlier gpulab left: moved into the home's filesystem
    old_home = hub.data_root / "homes" / "dana"
    old_home.mkdir(parents=True)
    (old_home / "notes.txt").write_text("from before the quota")
    hub.start()
    dana = hub.create_user("dana")
    assert dana.spawn(profile="cpu").status_code in (201, 202)
    assert dana.run("print(open('notes.txt').read())").strip() == "from before the quota"
    assert os.path.ismount(old_home)

    # writing past the home's size fails for this user, with "no space left"
    out = dana.run(FILL.format(mib=100)).split()
    assert out[0] == "refused" and out[2] == "ENOSPC", out
    assert 40 <= int(out[1]) < 64, out
    api = hub.api("/gpulab/storage")
    volume = dana.session.get(api, timeout=30).json()["volume"]
    assert volume["size_bytes"] == 64 * 2**20
    assert volume["used_bytes"] >= int(out[1]) * 2**20

    # grown while the server runs: at once where the kernel lets a filesystem grow in
    # use, else (this machine: no CAP_SYS_RESOURCE) at the next start, and it says so
    r = dana.session.post(api + "/volume/resize", json={"size": "256MiB"}, timeout=60)
    assert r.status_code == 200 and r.json()["size_bytes"] == 256 * 2**20, r.text
    if r.json().get("note"):
        assert "applies when your server next starts" in r.json()["note"]
        dana.stop()  # the home is unmounted, and grown when it is next mounted
        assert dana.session.get(api, timeout=30).json()["volume"]["size_bytes"] == 256 * 2**20
        assert dana.spawn(profile="cpu").status_code in (201, 202)
    assert "note" not in dana.session.get(api, timeout=30).json()["volume"]
    dana.run("import os; os.remove('filler.bin')")
    assert dana.run(FILL.format(mib=100)).split() == ["wrote", "100"]
    total = int(dana.run("import shutil; print(shutil.disk_usage('.').total)").strip())
    assert 200 * 2**20 < total <= 256 * 2**20

    # snapshot and rollback on the mounted home
    dana.run("import os; os.remove('filler.bin')")
    dana.run("open('work.txt', 'w').write('v1')")
    r = dana.session.post(api + "/volume/snapshots", json={"name": "v1"}, timeout=60)
    assert r.status_code == 201, r.text
    dana.run("open('work.txt', 'w').write('v2'); open('later.txt', 'w').write('x')")
    dana.stop()
    r = dana.session.post(api + "/volume/snapshots/v1/rollback", timeout=60)
    assert r.status_code == 200, r.text
    assert dana.spawn(profile="cpu").status_code in (201, 202)
    out = dana.run(
        "import os; print(open('work.txt').read(), os.path.exists('later.txt'), "
        "open('notes.txt').read())"
    )
    assert out.split() == ["v1", "False", "from", "before", "the", "quota"]

    # deleting the home unmounts its filesystem and removes it
    dana.stop()
    for snap in dana.session.get(api + "/volume/snapshots", timeout=30).json()["snapshots"]:
        dana.session.delete(api + f"/volume/snapshots/{snap['name']}", timeout=30)
    r = hub.admin.delete(api + "/volume?user=dana&confirm=dana", timeout=60)
    assert r.status_code == 204, r.text
    assert not os.path.ismount(old_home) and not old_home.exists()
    assert not (hub.data_root / "volumes" / "dana.img").exists()
