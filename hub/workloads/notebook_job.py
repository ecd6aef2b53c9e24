"""A notebook run as a job's replica: ``python -m gpulab.hub.workloads.notebook_job
NOTEBOOK [NAME=VALUE ...]``.

Each replica runs the notebook top to bottom in a kernel of its own (nbclient), with the
job's environment (``TF_CONFIG``, ``RANK``, ``CUDA_VISIBLE_DEVICES``...), in the job's
working folder. ``NAME=VALUE`` arguments are parameters, as papermill takes them: a cell
tagged ``injected-parameters`` that sets them goes right after the cell tagged
``parameters`` (at the top when there is none); a value is read as a Python literal
(``0.01``, ``[1, 2]``, ``True``) when it is one, else kept as a string.

What the cells print goes to the replica's log as it comes (so ``gpulab-metric:`` lines
reach a sweep), each cell announced by a line; the executed notebook, outputs and all,
is written beside the log as ``<replica>.ipynb`` after every cell, so it shows how far a
run got. The exit status is 0 when every cell ran, 1 at the first cell that raised (its
error is in the log and in the output notebook), 2 for a notebook that cannot be read.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"


def parse_parameters(args: list[str]) -> dict[str, object]:
    """``NAME=VALUE`` words as a dict; ValueError naming a word that is not one."""
    parameters: dict[str, object] = {}
    for word in args:
        name, eq, value = word.partition("=")
        name = name.strip().removeprefix("--")
        if not eq or not name.isidentifier():
            raise ValueError(f"{word!r} is not a parameter NAME=VALUE")
        try:
            parameters[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parameters[name] = value
    return parameters


def inject(notebook, parameters: dict[str, object]) -> None:
    """Put the parameters cell into ``notebook`` (an nbformat node), replacing one
    injected by an earlier run."""
    import nbformat

    cells = [c for c in notebook.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    if parameters:
        source = "# Parameters of this run\n" + "".join(
            f"{name} = {value!r}\n" for name, value in parameters.items()
        )
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
        after = next(
            (
                i + 1
                for i, c in enumerate(cells)
                if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])
            ),
            0,
        )
        cells.insert(after, cell)
    notebook.cells = cells


def output_path(notebook: Path) -> Path:
    """Beside the replica's log (the job's folder), named after the replica."""
    metrics = os.environ.get("GPULAB_METRICS_FILE")
    replica = os.environ.get("GPULAB_REPLICA", "")
    if metrics and replica:
        return Path(metrics).parent / f"{replica}.ipynb"
    return notebook.with_name(notebook.stem + ".output.ipynb")


def _client_class():
    from nbclient import NotebookClient

    class LoggingClient(NotebookClient):
        """Prints what each cell prints as it comes, and saves after each cell."""

        def __init__(self, *args, save, **kwargs):
            super().__init__(*args, **kwargs)
            self.save = save

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            kind = msg.get("msg_type")
            if kind == "stream":
                stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
                stream.write(content.get("text", ""))
                stream.flush()
            elif kind == "error":
                print("\n".join(content.get("traceback", [])), file=sys.stderr, flush=True)
            elif kind == "execute_result":
                text = content.get("data", {}).get("text/plain")
                if text:
                    print(text, flush=True)
            return super().output(outs, msg, display_id, cell_index)

    return LoggingClient


def run(notebook_path: Path, parameters: dict[str, object], out: Path) -> int:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient.exceptions import CellExecutionError

    try:
        notebook = nbformat.read(notebook_path, as_version=4)
    except (OSError, ValueError) as e:
        print(f"gpulab: cannot read the notebook {notebook_path}: {e}", file=sys.stderr)
        return 2
    inject(notebook, parameters)
    kernel = notebook.metadata.get("kernelspec", {}).get("name") or "python3"
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        print(f"gpulab: no kernel {kernel!r} here: running the notebook with python3", flush=True)
        kernel = "python3"
    code_cells = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        temporary = out.with_name(f".{out.name}.{os.getpid()}")
        nbformat.write(notebook, temporary)
        temporary.replace(out)

    def announce(cell, cell_index, **_):
        number = code_cells.index(cell_index) + 1 if cell_index in code_cells else 0
        print(f"==> gpulab: cell {number} of {len(code_cells)}", flush=True)

    client = _client_class()(
        notebook,
        save=save,
        kernel_name=kernel,
        timeout=None,
        resources={"metadata": {"path": os.getcwd()}},
        on_cell_execute=announce,
        on_cell_executed=lambda **_: save(),
    )
    print(f"==> gpulab: running {notebook_path} ({len(code_cells)} code cells), output in {out}")
    try:
        client.execute()
    except CellExecutionError:
        save()
        print(f"==> gpulab: a cell failed; the notebook as it ran is in {out}", flush=True)
        return 1
    save()
    print(f"==> gpulab: every cell ran; the notebook as it ran is in {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m gpulab.hub.workloads.notebook_job NOTEBOOK [NAME=VALUE ...]")
        return 2
    try:
        parameters = parse_parameters(argv[1:])
    except ValueError as e:
        print(f"gpulab: {e}", file=sys.stderr)
        return 2
    notebook = Path(argv[0])
    return run(notebook, parameters, output_path(notebook.absolute()))


if __name__ == "__main__":
    sys.exit(main())
