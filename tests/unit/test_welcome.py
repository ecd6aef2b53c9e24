"""The welcome notebook's rules (gpulab.extensions.server.welcome): written once, into a
new home only, never over anything; its cells run in tests/e2e/test_notebook_api.py."""

from __future__ import annotations

import logging

import nbformat

from gpulab.extensions.server.welcome import MARKER, NOTEBOOK, SOURCE, welcome

log = logging.getLogger("test")


def test_a_new_home_gets_the_notebook_and_the_marker(tmp_path):
    (tmp_path / ".bashrc").write_text("")
    (tmp_path / ".local").mkdir()
    assert welcome(tmp_path, tmp_path, log) == tmp_path / NOTEBOOK
    assert (tmp_path / NOTEBOOK).read_bytes() == SOURCE.read_bytes()
    assert (tmp_path / MARKER).is_file()


def test_once_marked_a_home_never_gets_it_again(tmp_path):
    welcome(tmp_path, tmp_path, log)
    (tmp_path / NOTEBOOK).unlink()
    assert welcome(tmp_path, tmp_path, log) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gpulab"]


def test_a_home_with_files_is_marked_without_a_notebook(tmp_path):
    (tmp_path / "data.csv").write_text("x\n1\n")
    assert welcome(tmp_path, tmp_path, log) is None
    assert not (tmp_path / NOTEBOOK).exists()
    assert (tmp_path / MARKER).is_file()


def test_the_notebook_goes_where_the_lab_shows_files_and_the_marker_in_the_home(tmp_path):
    root, home = tmp_path / "work", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    assert welcome(root, home, log) == root / NOTEBOOK
    assert (home / MARKER).is_file() and not (root / ".gpulab").exists()


def test_a_home_it_cannot_mark_is_told_in_the_log_and_the_server_starts(tmp_path, caplog):
    (tmp_path / ".gpulab").write_text("a file where the folder would be")
    with caplog.at_level(logging.WARNING, logger="test"):
        welcome(tmp_path, tmp_path, log)
    assert "could not write the welcome notebook" in caplog.text


def test_the_welcome_notebook_is_a_valid_notebook_for_the_python_kernel():
    notebook = nbformat.read(SOURCE, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
