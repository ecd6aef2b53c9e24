"""The environment users' kernels, terminals and jobs run in (local backend), apart from
gpulab's own: the Jupyter server, the hub and the model server never run in it, and
nothing a user installs reaches them.

A user environment is a folder (``servers.environment``; by default ``.user-env`` beside
gpulab's own environment, made by ``scripts/install``)::

    python/     a venv of the machine's Python 3 with system site packages, so that
                ``pip install --user`` works (pip refuses it in a venv without them)
    packages/   the base packages, installed there with ``pip --prefix``: ipykernel,
                the ML stack, gpulab's client (``requirements/user-env.txt``)
    jupyter/    the kernel spec (``kernels/python3``), on the server's JUPYTER_PATH

Why ``packages/`` is not the venv's own site-packages: Python puts a venv's
site-packages *before* the user's (``pip install --user``), and pip refuses a ``--user``
install that needs another version of a package there ("Will not install to the user
site because it will lack sys.path precedence"): with gpulab's environment as the base,
``pip install --user s3fs`` failed on botocore. Here a one-line ``.pth`` in the venv adds
the user's site-packages and then ``packages/``, in that order, as Python starts: what
the user installs comes first, and pip installs it (the base copy lies outside the venv,
so pip leaves it alone).

``python3 userenv.py make ROOT -r REQUIREMENTS... [-e SOURCE]`` makes or remakes one
(stdlib only, so ``scripts/install`` runs it before gpulab's environment exists).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HOOK_MODULE = "_gpulab_user_env"
BUILDING = "GPULAB_USER_ENV_BUILDING"
"""Set while ``packages/`` is remade: the hook then adds nothing, so the new set of
packages is resolved on its own, not against the one it replaces."""

HOOK = '''"""gpulab's user environment: the user's own packages (pip install --user), then the
base packages in {packages}. Loaded by gpulab-user-env.pth as Python starts."""
import os
import site
import sys

BASE = {packages!r}

if not os.environ.get({building!r}):
    # the venv's site-packages are on sys.path already; the user's would follow, then the
    # system's: the user's go here instead, with the base after them
    if not sys.flags.no_user_site and site.check_enableusersite():
        _user = site.getusersitepackages()
        if os.path.isdir(_user) and _user not in sys.path:
            sys.path.append(_user)
    site.addsitedir(BASE)
'''


@dataclass(frozen=True)
class UserEnvironment:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "python" / "bin" / "python"

    @property
    def bin_dirs(self) -> list[str]:
        """Where its commands are: the venv's (python, pip), the base packages' (jupyter,
        tensorboard, gpulab)."""
        return [str(self.root / "python" / "bin"), str(self.root / "packages" / "bin")]

    @property
    def jupyter_path(self) -> Path:
        return self.root / "jupyter"

    @property
    def kernel_spec(self) -> Path:
        return self.jupyter_path / "kernels" / "python3" / "kernel.json"

    def problem(self) -> str:
        """Why users' kernels cannot run in it, or ""."""
        for path, what in ((self.python, "its Python"), (self.kernel_spec, "its kernel spec")):
            if not path.is_file():
                return (
                    f"the user environment {self.root} has no {what} ({path}): make it with "
                    f"scripts/install, or point servers.environment at one"
                )
        return ""

    def env(self) -> dict[str, str]:
        """What a user's server adds to its environment so that its kernels, terminals and
        jobs run here: the kernel spec's folder on JUPYTER_PATH (PATH is ``account_env``'s)."""
        return {"JUPYTER_PATH": str(self.jupyter_path)}


def default_root() -> Path:
    """``.user-env`` beside the environment gpulab runs in (``scripts/install`` makes both)."""
    return Path(sys.prefix).parent / ".user-env"


def user_environment(settings) -> UserEnvironment:
    configured = settings.servers.environment
    return UserEnvironment(Path(configured) if configured else default_root())


# -- making one (scripts/install) --------------------------------------------------------


def _stamp(requirements: list[Path], source: str | None) -> str:
    """What the environment was made from: Python's version, the requirements, and
    gpulab's project file (its commands)."""
    h = hashlib.sha256(f"{sys.version_info[:2]}\n{source or ''}\n".encode())
    files = [*requirements, *([Path(source) / "pyproject.toml"] if source else [])]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _site_packages(prefix: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix / "lib" / version / "site-packages"


def make(
    root: Path,
    requirements: list[Path],
    no_deps: list[Path] = (),
    source: str | None = None,
    ipython_config: Path | None = None,
    base_python: str = "/usr/bin/python3",
) -> bool:
    """Make the user environment at ``root``, or remake its packages when ``requirements``
    changed; False when it was up to date. ``no_deps``: requirements installed without
    their own (TF Serving's API package pins the full ``tensorflow``, which the CPU build
    stands in for). The new packages are installed beside the old
    ones and swapped in at the end, so a failed install leaves the old environment whole."""
    root = root.resolve()
    venv = root / "python"
    env = UserEnvironment(root)
    stamp_file = root / "stamp"
    stamp = _stamp([*requirements, *no_deps], source)
    current = stamp_file.read_text().strip() if stamp_file.is_file() else ""
    if current == stamp and not env.problem():
        return False
    root.mkdir(parents=True, exist_ok=True)
    if not env.python.is_file():
        subprocess.run([base_python, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    packages = root / "packages"
    venv_site = Path(
        subprocess.run(
            [str(env.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    base_site = _site_packages(packages)
    (venv_site / f"{HOOK_MODULE}.py").write_text(
        HOOK.format(packages=str(base_site), building=BUILDING)
    )
    (venv_site / "gpulab-user-env.pth").write_text(f"import {HOOK_MODULE}\n")

    new = root / "packages.new"
    shutil.rmtree(new, ignore_errors=True)
    pip = [str(env.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pip += ["--prefix", str(new)]
    building = {**os.environ, BUILDING: "1"}
    args = [a for r in requirements for a in ("-r", str(r))]
    subprocess.run([*pip, *args], check=True, env=building)
    for r in no_deps:
        subprocess.run([*pip, "--no-deps", "-r", str(r)], check=True, env=building)
    old = root / "packages.old"
    shutil.rmtree(old, ignore_errors=True)
    if packages.exists():
        packages.rename(old)
    new.rename(packages)
    shutil.rmtree(old, ignore_errors=True)
    if source:  # in place: an editable install's finder names the folder it went to
        pip[-1] = str(packages)
        subprocess.run([*pip, "--no-deps", "-e", source], check=True, env=building)

    _write_kernel_spec(env)
    if ipython_config is not None:
        target = venv / "etc" / "ipython" / "ipython_config.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ipython_config, target)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    stamp_file.write_text(stamp + "\n")
    return True


def _write_kernel_spec(env: UserEnvironment) -> None:
    """The python3 kernel spec, naming the environment's Python by its path. ipykernel's
    own spec says ``python``, which the Jupyter server would take as its own Python."""
    spec = {
        "argv": [
            str(env.python),
            "-Xfrozen_modules=off",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    env.kernel_spec.parent.mkdir(parents=True, exist_ok=True)
    env.kernel_spec.write_text(json.dumps(spec, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="userenv.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="make or update a user environment")
    m.add_argument("root", type=Path)
    m.add_argument("-r", "--requirements", type=Path, action="append", default=[])
    m.add_argument(
        "--no-deps",
        type=Path,
        action="append",
        default=[],
        help="requirements installed without their dependencies",
    )
    m.add_argument("-e", "--editable", help="gpulab's source folder, installed without deps")
    m.add_argument("--ipython-config", type=Path)
    args = parser.parse_args(argv)
    changed = make(args.root, args.requirements, args.no_deps, args.editable, args.ipython_config)
    print(f"user environment {args.root}: {'made' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
