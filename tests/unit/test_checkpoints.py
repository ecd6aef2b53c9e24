"""The kernels' checkpoint store on a home: what is kept, what goes, and when."""

from __future__ import annotations

import json

import pytest

from gpulab.extensions.server.checkpoints import CheckpointNotFound, Checkpoints


def save(store: Checkpoints, kernel: str, notebook: str, names: list[str], data: bool = False):
    """A checkpoint as ``namespace.py``'s save leaves it, recorded as saved."""
    file = store.new(kernel, notebook)
    file.write_bytes(b"pickle")
    if data:
        file.with_name(file.name + ".0a1b2c.data").write_bytes(b"\0" * 4096)
    file.with_name(file.name + ".json").write_text(json.dumps({"saved": names, "failed": {}}))
    kept = store.saved(file)
    return file if kept else None


def states(store: Checkpoints) -> list[tuple[str, str]]:
    return [(c["notebook"], c["state"]) for c in store.list()]


def test_a_notebook_keeps_its_newest_checkpoints_once_one_was_restored(tmp_path):
    store = Checkpoints(tmp_path, keep=2)
    files = [save(store, "k1", "train.ipynb", ["x"], data=True) for _ in range(4)]
    other = save(store, "k2", "eval.ipynb", ["y"])
    assert len({f.name for f in files}) == 4  # never one name twice, even in one second
    # nothing goes before a restore was verified
    assert len(store.list()) == 5
    store.restored(files[-1])
    left = {c["file"] for c in store.list()}
    assert left == {str(files[-1]), str(files[-2]), str(other)}
    # with their data files
    assert not list(tmp_path.glob(files[0].name + "*"))
    assert states(store)[0] == ("eval.ipynb", "saved")


def test_an_empty_checkpoint_is_not_kept_and_a_failed_restore_is_never_removed(tmp_path):
    store = Checkpoints(tmp_path, keep=1)
    lost = save(store, "k1", "work.ipynb", ["x", "model"])
    store.not_restored(lost, "ModuleNotFoundError: No module named 'thing'")
    # the kernel came back empty: its next save holds nothing and takes no one's place
    assert save(store, "k1", "work.ipynb", []) is None
    assert [c["id"] for c in store.list()] == [lost.name.removesuffix(".pkl")]
    # later saves of the notebook, restored, leave the one that failed alone
    for _ in range(3):
        store.restored(save(store, "k1", "work.ipynb", ["y"]))
    kept = {c["state"]: c for c in store.list()}
    assert set(kept) == {"restored", "not restored"} and len(store.list()) == 2
    assert kept["not restored"]["why"] == "ModuleNotFoundError: No module named 'thing'"
    assert kept["not restored"]["saved"] == 2
    assert store.file(kept["not restored"]["id"]) == lost


@pytest.mark.parametrize("ident", ["../x", "nope", "", "a/b", "..", "20261206-1"])
def test_only_a_checkpoint_id_names_a_checkpoint(tmp_path, ident):
    store = Checkpoints(tmp_path)
    save(store, "k1", "a.ipynb", ["x"])
    (tmp_path.parent / "x.pkl").write_bytes(b"outside")
    with pytest.raises(CheckpointNotFound):
        store.file(ident)
