"""Users' kernels, terminals and jobs run in a user environment, apart from gpulab's own
(spawner/userenv.py): what a user installs with ``pip install --user`` comes first there,
in any version, and never reaches the Jupyter server or the model server.

Before, kernels ran in gpulab's environment: ``pip install --user s3fs`` failed ("Will not
install to the user site because it will lack sys.path precedence to botocore in
.venv"), as would any package wanting another version of one gpulab pins, and the
user's packages were loaded by the Jupyter server itself.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from gpulab.spawner.userenv import default_root
from hubfixture import run_job, wheel

# a package the base has (boto3's botocore, gpulab's too), in a version neither has; one
# that needs exactly it, as s3fs's aiobotocore needs its own botocore; and a .pth that
# says which Python loads the user's packages
WHEELS = {
    "botocore-0.0.1-py3-none-any.whl": wheel(
        "botocore", "0.0.1", {"botocore/__init__.py": "__version__ = '0.0.1'\n"}
    ),
    "oldcloud-1.0-py3-none-any.whl": wheel(
        "oldcloud",
        "1.0",
        {"oldcloud/__init__.py": "import botocore\nBOTOCORE = botocore.__version__\n"},
        requires=("botocore==0.0.1",),
    ),
    "whoruns-1.0-py3-none-any.whl": wheel(
        "whoruns",
        "1.0",
        {
            "whoruns.pth": "import os, sys; open(os.path.expanduser('~/loaded-by.txt'), 'a')"
            ".write(sys.executable + '\\n')\n"
        },
    ),
}

INSTALL = """
import base64, json, os, subprocess
os.makedirs("wheels", exist_ok=True)
for name, data in json.loads({wheels!r}).items():
    open(os.path.join("wheels", name), "wb").write(base64.b64decode(data))
# pip as a terminal finds it on PATH, with --user as the issue's `pip install --user s3fs`
r = subprocess.run(["pip", "install", "--user", "--no-index", "--find-links", "wheels",
                    "oldcloud", "whoruns"], capture_output=True, text=True)
print(r.returncode, r.stdout[-600:], r.stderr[-600:])
"""

PROBE = (
    "import sys, shutil, oldcloud, botocore, numpy, gpulab\n"
    "print(oldcloud.BOTOCORE, botocore.__file__, sys.executable, shutil.which('python'))"
)


def test_a_user_installs_over_the_base_environment_and_gpulab_never_loads_it(hub):
    env = default_root()
    alice = hub.create_user("alice")
    alice.spawn(profile="cpu")
    # the kernel the lab offers is the user environment's Python
    specs = alice.server_get("/api/kernelspecs").json()
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == str(env / "python/bin/python")

    wheels = json.dumps({n: base64.b64encode(w).decode() for n, w in WHEELS.items()})
    out = alice.run(INSTALL.format(wheels=wheels), timeout=120)
    assert out.startswith("0 "), out

    home = hub.data_root / "homes" / "alice"
    for round in ("same server", "after a restart"):
        version, module, python, on_path = alice.run(PROBE).split()
        assert version == "0.0.1", round
        assert module.startswith(str(home / ".local")), (round, module)
        assert python == str(env / "python/bin/python") and on_path.startswith(str(env)), round
        if round == "same server":
            alice.stop()
            alice.spawn(profile="cpu")

    # a job's python is the same environment, with the user's packages
    done, log = run_job(
        alice,
        {
            "name": "probe",
            "command": ["python", "-c", "import oldcloud; print('job sees', oldcloud.BOTOCORE)"],
        },
    )
    assert done["state"] == "succeeded" and "job sees 0.0.1" in log, log

    # the user's packages were loaded by kernels and the job, never by gpulab's Python
    # (the Jupyter server, started twice meanwhile)
    loaded = set((home / "loaded-by.txt").read_text().split())
    assert loaded == {str(env / "python/bin/python")}, loaded
    assert not any(p.startswith(sys.prefix) for p in loaded)
    assert Path(sys.prefix) != env
