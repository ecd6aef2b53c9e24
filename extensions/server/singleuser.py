"""The user's Jupyter server process: ``jupyterhub-singleuser``, started without
compiling grammars that nothing in it uses, and ended without waiting for idle threads
(``exit_now``).

jsonschema's format checkers import ``rfc3987_syntax`` at once, and that module builds
some 35 Earley parsers as it is imported: about a second of CPU in every server start
(half of a spawn on a small machine), for the ``iri`` formats that no Jupyter schema
names (jupyter_server#1559, jsonschema#1428). Here the module is stood in for by one
that imports it the first time an IRI is checked, so validation is unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types

SLOW = "rfc3987_syntax"


def defer_iri_grammars() -> None:
    """Put a stand-in for ``rfc3987_syntax`` in ``sys.modules`` that loads it when used."""
    if SLOW in sys.modules or importlib.util.find_spec(SLOW) is None:
        return
    real: list[types.ModuleType] = []

    def loaded() -> types.ModuleType:
        if not real:
            del sys.modules[SLOW]
            real.append(importlib.import_module(SLOW))
        return real[0]

    def is_valid_syntax(rule: str, value: str) -> bool:
        return loaded().is_valid_syntax(rule, value)

    def attribute(name: str):
        if name.startswith("__"):  # the import system asking (``__path__``): not a use
            raise AttributeError(name)
        return getattr(loaded(), name)

    stand_in = types.ModuleType(SLOW, "rfc3987_syntax, imported when first used")
    stand_in.is_valid_syntax = is_valid_syntax
    stand_in.__getattr__ = attribute
    sys.modules[SLOW] = stand_in


def exit_now(code) -> None:
    """End the process once the server has shut down, without waiting for idle threads.

    A server where a notebook was opened in the lab (jupyter-collaboration's document
    rooms) leaves an idle AnyIO worker thread that nothing stops (anyio's threads are
    not daemons; pycrdt-websocket's server task never ends, y-crdt/pycrdt-websocket#148):
    Python would wait for it forever at exit, so every stop of such a server took the
    hub's SIGTERM and SIGKILL, 15 s later. Kernels, documents and logs are all closed by
    then."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def main() -> None:
    # the server started without the user's own packages (``pip install --user``): what a
    # user installs never breaks it. Its kernels and terminals, which start from this
    # environment, have them.
    os.environ.pop("PYTHONNOUSERSITE", None)
    defer_iri_grammars()
    from jupyterhub.singleuser import main as singleuser

    exit_now(singleuser())


if __name__ == "__main__":
    main()
