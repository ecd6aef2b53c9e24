"""The user's server and the hub start without compiling IRI grammars (a second of CPU
each), schemas that name the ``iri`` formats are still checked, and nothing in the
user's home (the server's working directory) comes before the server's own modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

START = """
import sys
from gpulab.extensions.server.singleuser import defer_iri_grammars
defer_iri_grammars()
import jupyterhub.app, jupyterhub.singleuser
print("compiled at start:", "rfc3987_syntax.syntax_helpers" in sys.modules)
from jsonschema import Draft7Validator
check = Draft7Validator({"format": "iri"}, format_checker=Draft7Validator.FORMAT_CHECKER)
print("bad iri refused:", bool(list(check.iter_errors("http://a b/"))))
print("good iri taken:", not list(check.iter_errors("http://example.org/ä")))
"""


def test_the_server_and_hub_start_without_the_iri_grammars_and_still_check_iris():
    out = subprocess.run(
        [sys.executable, "-c", START], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.splitlines() == [
        "compiled at start: False",
        "bad iri refused: True",
        "good iri taken: True",
    ], out


def test_without_the_stand_in_the_grammars_are_compiled_at_import():
    # what the stand-in saves: jupyter_events (imported by both) compiles them at once
    code = (
        "import sys, jupyterhub.singleuser; print('rfc3987_syntax.syntax_helpers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


def test_a_module_in_the_users_home_is_not_imported_by_their_server(tmp_path):
    # the server runs in the home: a file there named as a module the server imports
    # (tornado.py, jupyterhub/) would replace it and break the server
    (tmp_path / "tornado.py").write_text("raise SystemExit('the home module was imported')\n")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("gpulab-singleuser")), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and "home module" not in out.stdout + out.stderr, out.stderr
