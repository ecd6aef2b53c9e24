"""The environment users' kernels, terminals and jobs run in (local backend), apart from
gpulab's own: the Jupyter server, the hub and the model server never run in it, and
nothing a user installs reaches them.

A user environment is a folder (``servers.environment``; by default ``.user-env`` beside
gpulab's own environment, made by ``scripts/install``)::

    python/     the machine's Python 3, relocated: its interpreter copied, its standard
                library linked, its own (empty) site-packages; not a venv
    packages/   the base packages, installed with ``pip --prefix``: ipykernel, the ML
                stack, pip, gpulab's client (``requirements/user-env*.txt``)
    jupyter/    the kernel spec (``kernels/python3``), on the server's JUPYTER_PATH
    paths.json  where ``packages/`` keeps its modules and commands

Why not a venv: Python puts a venv's site-packages *before* the user's (``pip install
--user``), so pip refuses a user install that needs another version of a package there
("Will not install to the user site because it will lack sys.path precedence": with
gpulab's environment as the base, ``pip install --user s3fs`` failed on botocore), and it
will not uninstall or upgrade a user's package ("outside environment"). A plain Python
puts the user's site-packages first: what users install shadows the base, and pip
installs, upgrades and uninstalls it. A ``.pth`` in ``python/``'s site-packages adds,
after the user's, the layers of the snapshot a server started from, then ``packages/``.
Its ``pip.conf`` lets pip install there although the linked standard library carries
the distribution's EXTERNALLY-MANAGED marker: that marker guards the system's own
packages, none of which are on this Python's path.

``python3 userenv.py make ROOT -r REQUIREMENTS... [-e SOURCE]`` makes or remakes one
(stdlib only, so ``scripts/install`` runs it before gpulab's environment exists).
"""

from __future__ import annotations

import argparse
import filecmp
import functools
import glob
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

LAYERS = "GPULAB_ENV_LAYERS"
"""The site-packages of the snapshot a server started from (its layers, the newest
first), between the user's own packages and the base."""

HOOK = '''"""gpulab's user environment. Python has put the user's own packages (pip install
--user) on sys.path; after them go those of the snapshot the server started from
(${layers}), then the base packages in {packages}. Loaded by gpulab-user-env.pth."""
import os
import site

if not os.environ.get({building!r}):
    for _layer in os.environ.get({layers!r}, "").split(os.pathsep):
        if _layer and os.path.isdir(_layer):
            site.addsitedir(_layer)
    site.addsitedir({packages!r})
'''

PIP_CONF = """# gpulab's user environment: pip installs here (and for users, in their own site)
# although the linked standard library carries the distribution's EXTERNALLY-MANAGED
# marker, which guards the system's packages: none of them are on this Python's path.
[global]
break-system-packages = true
"""


@dataclass(frozen=True)
class UserEnvironment:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "python" / "bin" / "python"

    @property
    def bin_dirs(self) -> list[str]:
        """Where its commands are: its Python's, the base packages' (pip, jupyter,
        tensorboard, gpulab)."""
        return [str(self.root / "python" / "bin"), self.paths().get("scripts", "")]

    def paths(self) -> dict[str, str]:
        """Where ``packages/`` keeps its modules (``purelib``) and commands (``scripts``),
        as ``make`` recorded them."""
        return _read_paths(self.root / "paths.json")

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

    def identity(self) -> str:
        """The environment as a snapshot's label names its base: its folder and a hash of
        what it was made from."""
        stamp = self.root / "stamp"
        made = stamp.read_text().strip()[:16] if stamp.is_file() else "unknown"
        return f"local:{self.root}#{made}"

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


@functools.cache
def _read_paths(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def make(
    root: Path,
    requirements: list[Path],
    no_deps: list[Path] = (),
    source: str | None = None,
    ipython_config: Path | None = None,
    base_python: str = "/usr/bin/python3",
) -> bool:
    """Make the user environment at ``root``, or remake its packages when ``requirements``
    changed; False when they were up to date. ``no_deps``: requirements installed without
    their own (TF Serving's API package pins the full ``tensorflow``, which the CPU build
    stands in for). The new packages are installed beside the old ones and swapped in at
    the end, so a failed install leaves the old environment whole."""
    root = root.resolve()
    env = UserEnvironment(root)
    stamp_file = root / "stamp"
    stamp = _stamp([*requirements, *no_deps], source)
    current = stamp_file.read_text().strip() if stamp_file.is_file() else ""
    root.mkdir(parents=True, exist_ok=True)
    own_site = _relocate_python(root / "python", base_python)
    packages = root / "packages"
    paths = _scheme_paths(env, packages)
    # what gpulab itself puts in: written each time, cheap, so they follow gpulab's code
    hook = HOOK.format(packages=paths["purelib"], building=BUILDING, layers=LAYERS)
    (own_site / f"{HOOK_MODULE}.py").write_text(hook)
    (own_site / "gpulab-user-env.pth").write_text(f"import {HOOK_MODULE}\n")
    (root / "python" / "pip.conf").write_text(PIP_CONF)
    (root / "paths.json").write_text(json.dumps(paths, indent=1) + "\n")
    _write_kernel_spec(env)
    if ipython_config is not None:
        target = root / "python" / "etc" / "ipython" / "ipython_config.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ipython_config, target)
    if current != stamp or env.problem() or not Path(paths["purelib"]).is_dir():
        _install(env, packages, requirements, no_deps, source)
        stamp_file.write_text(stamp + "\n")
        changed = True
    else:
        changed = False
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return changed


def _relocate_python(python: Path, base_python: str) -> Path:
    """``python/``: the interpreter of ``base_python`` copied into ``bin/``, its standard
    library (and headers) linked, so Python takes ``python/`` for its prefix; returns
    the site-packages folder of that prefix, made."""
    info = json.loads(
        subprocess.run(
            [base_python, "-I", "-c",
             "import json, sys, sysconfig; print(json.dumps({'exe': sys.executable, "
             "'version': f'{sys.version_info[0]}.{sys.version_info[1]}', "
             "'stdlib': sysconfig.get_path('stdlib'), 'include': sysconfig.get_path('include')}))"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    version = info["version"]
    real = os.path.realpath(info["exe"])
    if (python / "pyvenv.cfg").exists():  # a venv made by an earlier gpulab: made anew
        shutil.rmtree(python)
    bin_dir = python / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / f"python{version}"
    if not exe.is_file() or not filecmp.cmp(real, exe, shallow=False):
        tmp = exe.with_name(exe.name + ".new")
        shutil.copy2(real, tmp)
        os.replace(tmp, exe)
    for name in ("python", "python3"):
        _link(bin_dir / name, exe.name)
    _link(python / "lib" / f"python{version}", info["stdlib"])
    if info["include"] and os.path.isdir(info["include"]):
        _link(python / "include" / f"python{version}", info["include"])
    own = subprocess.run(
        [str(exe), "-I", "-c", "import site; print(site.getsitepackages()[0])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    site_dir = Path(own)
    if not site_dir.is_relative_to(python) or site_dir.is_relative_to(
        python / "lib" / f"python{version}"
    ):
        raise SystemExit(
            f"{base_python} would keep packages at {own}, not in {python}: unsupported"
        )
    site_dir.mkdir(parents=True, exist_ok=True)
    return site_dir


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _scheme_paths(env: UserEnvironment, prefix: Path) -> dict[str, str]:
    """Where ``pip install --prefix PREFIX`` with this Python puts modules and commands."""
    code = (
        "import json, sys, sysconfig; p = sysconfig.get_paths(vars={'base': sys.argv[1], "
        "'platbase': sys.argv[1]}); print(json.dumps({k: p[k] for k in ('purelib', 'scripts')}))"
    )
    out = subprocess.run(
        [str(env.python), "-I", "-c", code, str(prefix)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def _install(env, packages: Path, requirements, no_deps, source) -> None:
    """The base packages, into ``packages/`` through a new folder swapped in at the end.
    pip itself comes from the wheel Debian's python3-venv ships, run by this Python."""
    wheels = sorted(glob.glob("/usr/share/python-wheels/pip-*.whl"))
    if not wheels:
        raise SystemExit("no pip wheel in /usr/share/python-wheels: install python3-venv")
    new = packages.with_name("packages.new")
    shutil.rmtree(new, ignore_errors=True)
    # -s: not root's own user site; BUILDING: not the packages being replaced
    pip = [str(env.python), "-s", f"{wheels[-1]}/pip", "install", "-q"]
    pip += ["--disable-pip-version-check", "--root-user-action=ignore", "--prefix", str(new)]
    building = {**os.environ, BUILDING: "1"}
    args = [a for r in requirements for a in ("-r", str(r))]
    subprocess.run([*pip, "pip", *args], check=True, env=building)
    for r in no_deps:
        subprocess.run([*pip, "--no-deps", "-r", str(r)], check=True, env=building)
    old = packages.with_name("packages.old")
    shutil.rmtree(old, ignore_errors=True)
    if packages.exists():
        packages.rename(old)
    new.rename(packages)
    shutil.rmtree(old, ignore_errors=True)
    if source:  # in place: an editable install's finder names the folder it went to
        pip[-1] = str(packages)
        subprocess.run([*pip, "--no-deps", "-e", source], check=True, env=building)


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
