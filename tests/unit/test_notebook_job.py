"""A notebook run as a job's replica (gpulab.hub.workloads.notebook_job): parameters as
papermill takes them, the cells' output in the log as it comes, the executed notebook
beside the log, and the exit status a job's restart policy reads. Real kernels."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from gpulab.hub.workloads.notebook_job import inject, parse_parameters


def notebook(*cells: tuple[str, list[str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    return nb


def test_parameters_are_python_literals_or_strings() -> None:
    assert parse_parameters(["lr=0.01", "layers=[1, 2]", "name=resnet", "--flag=True"]) == {
        "lr": 0.01,
        "layers": [1, 2],
        "name": "resnet",
        "flag": True,
    }
    with pytest.raises(ValueError, match="'epochs' is not a parameter NAME=VALUE"):
        parse_parameters(["epochs"])


def test_parameters_go_after_the_parameters_cell_replacing_an_earlier_injection() -> None:
    nb = notebook(("import os", []), ("lr = 1.0", ["parameters"]), ("print(lr)", []))
    inject(nb, {"lr": 0.5})
    inject(nb, {"lr": 0.25})  # a second run: one injected cell, the new values
    sources = [c.source for c in nb.cells]
    assert sources[:2] == ["import os", "lr = 1.0"]
    assert sources[2] == "# Parameters of this run\nlr = 0.25\n"
    assert sources[3] == "print(lr)"
    plain = notebook(("print(lr)", []))
    inject(plain, {"lr": 3})
    assert plain.cells[0].metadata["tags"] == ["injected-parameters"]


def run_notebook(
    tmp_path, nb, *args: str
) -> tuple[subprocess.CompletedProcess, nbformat.NotebookNode]:
    path = tmp_path / "exp.ipynb"
    nbformat.write(nb, path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPULAB_REPLICA": "worker-0"}
    env["GPULAB_METRICS_FILE"] = str(tmp_path / "job" / "metrics.json")
    done = subprocess.run(
        [sys.executable, "-m", "gpulab.hub.workloads.notebook_job", str(path), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, nbformat.read(tmp_path / "job" / "worker-0.ipynb", as_version=4)


def test_a_notebook_runs_top_to_bottom_with_its_output_in_the_log_and_beside_it(tmp_path):
    nb = notebook(
        ("lr = 1.0\nepochs = 1", ["parameters"]),
        ("import os\nprint('replica', os.environ['GPULAB_REPLICA'], 'cwd', os.getcwd())", []),
        ("print(f'gpulab-metric: loss={lr * epochs}')\nlr * 10", []),
    )
    done, executed = run_notebook(tmp_path, nb, "lr=0.5", "epochs=3")
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stdout
    assert f"replica worker-0 cwd {tmp_path}" in log
    assert "gpulab-metric: loss=1.5" in log  # what a sweep reads
    assert "==> gpulab: cell 4 of 4" in log and "every cell ran" in log
    outputs = [o.get("text", "") for c in executed.cells for o in c.get("outputs", [])]
    assert "gpulab-metric: loss=1.5\n" in outputs
    assert executed.cells[1].source == "# Parameters of this run\nlr = 0.5\nepochs = 3\n"
    assert executed.cells[3].outputs[-1]["data"]["text/plain"] == "5.0"


def test_a_failing_cell_fails_the_replica_and_keeps_the_notebook_as_it_ran(tmp_path):
    nb = notebook(("print('before')", []), ("1 / 0", []), ("print('never')", []))
    done, executed = run_notebook(tmp_path, nb)
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "never" not in done.stdout
    assert "a cell failed" in done.stdout
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert executed.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert executed.cells[2].get("outputs") == []


def test_a_file_that_is_no_notebook_is_said_so(tmp_path):
    (tmp_path / "bad.ipynb").write_text("not json")
    done = subprocess.run(
        [sys.executable, "-m", "gpulab.hub.workloads.notebook_job", str(tmp_path / "bad.ipynb")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot read the notebook" in done.stderr and "Traceback" not in done.stderr
