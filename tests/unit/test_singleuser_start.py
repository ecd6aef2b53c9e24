"""The user's server and the hub start without compiling IRI grammars (a second of CPU
each), and schemas that name the ``iri`` formats are still checked."""

from __future__ import annotations

import subprocess
import sys

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
