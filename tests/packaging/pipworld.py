"""Venvs and wheels for the install tests: pip's resolver run offline, fast, honestly.

A "stand-in" is a wheel that holds only metadata (name, version, Requires-Dist): pip's
resolver reads nothing else. `standins_of_this_env` writes one for every distribution of
the venv running the tests, with its real Requires-Dist, so that a dry run resolves the
real dependency graph of the versions CI pins (torch 2.13.0 and triton 3.9.0 included:
the resolver may always pick those over a user's own) without a download.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, Requirement]:
    """pyproject.toml's requirements (dev included), by normalized name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {normalize(r.name): r for r in map(Requirement, reqs)}


def declared_floor(name: str) -> str:
    """The lower bound pyproject.toml declares for `name`."""
    bounds = [s.version for s in declared()[name].specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{name}: expected one '>=' bound in pyproject.toml"
    return bounds[0]


def _escape(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel at `path` holding `files` (the dist-info's METADATA and WHEEL included)
    plus a RECORD with their hashes."""
    dist_info = next(p.split("/")[0] for p in files if p.endswith(".dist-info/METADATA"))
    record = [_record_line(p, data) for p, data in files.items()] + [f"{dist_info}/RECORD,,"]
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in files.items():
            zf.writestr(p, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def standin_wheel(
    dest: Path,
    name: str,
    version: str,
    requires: list[str] = (),
    requires_python: str | None = None,
    extras: list[str] = (),
) -> Path:
    """A metadata-only wheel: what pip's resolver sees of a distribution, nothing more."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Provides-Extra: {e}" for e in extras]
    lines += [f"Requires-Dist: {r}" for r in requires]
    dist_info = f"{_escape(name)}-{version}.dist-info"
    wheel = "Wheel-Version: 1.0\nGenerator: nblab-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {
        f"{dist_info}/METADATA": ("\n".join(lines) + "\n").encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
    }
    return write_wheel(dest / f"{_escape(name)}-{version}-py3-none-any.whl", files)


def standins_of_this_env(dest: Path, exclude: set[str] = frozenset({"nblab"})) -> dict[str, str]:
    """A stand-in wheel in `dest` for every distribution this interpreter sees, with its
    real Requires-Dist. Returns {normalized name: version}."""
    dest.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        key = normalize(name)
        if key in seen or key in exclude:
            continue
        seen[key] = dist.version
        standin_wheel(
            dest,
            name,
            dist.version,
            requires=dist.metadata.get_all("Requires-Dist") or [],
            requires_python=dist.metadata.get("Requires-Python"),
            extras=dist.metadata.get_all("Provides-Extra") or [],
        )
    return seen


def isolated_pip_env() -> dict[str, str]:
    """This process's environment without any pip configuration: no config files (the
    machine's global constraints and local indexes), no PIP_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    return env


def run(cmd: list, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run cmd; on failure raise with its output (the assertion message names it)."""
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def make_venv(path: Path) -> Path:
    """A fresh venv at path, without pip of its own (`pip_for` drives it); returns its
    python."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    return path / "bin" / "python"


def pip_for(python: Path) -> list:
    """This venv's pip (a recent resolver), acting on the environment of `python`."""
    return [sys.executable, "-m", "pip", "--python", python]


def build_nblab_wheel(dest: Path) -> Path:
    """The wheel of this checkout, built as pip builds it (isolated build, the machine's
    pip configuration). The labextension build is skipped when nblab/labextension exists
    (pyproject's jupyter-builder hook), as it does after `make venv`."""
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dest, REPO])
    return next(dest.glob("nblab-*.whl"))


def dry_run_install(python: Path, target: Path, find_links: list[Path]) -> dict[str, str]:
    """What `pip install target` would install into python's venv, offline: the
    resolver sees the venv's installed distributions and the wheels in find_links only.
    Returns {normalized name: version}."""
    report = target.parent / f"report-{python.parent.parent.name}.json"
    cmd = [*pip_for(python), "install", "--dry-run", "--quiet", "--report", report]
    cmd += ["--no-index"] + [f"--find-links={d}" for d in find_links] + [target]
    run(cmd, env=isolated_pip_env())
    installs = json.loads(report.read_text())["install"]
    return {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def site_packages(python: Path) -> Path:
    out = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    return Path(out.stdout.strip())


def cached_venv(name: str, pins: list[str]) -> Path:
    """A venv under /tmp holding exactly `pins` (installed with this machine's pip
    configuration: local wheels first), built once per distinct pin list and reused:
    the pins are the whole of what it holds, so reuse changes nothing. Returns its
    python. Built beside its final path and renamed into place, so that concurrent
    sessions never see half a venv."""
    key = hashlib.sha256(("\n".join([sys.version, *sorted(pins)])).encode()).hexdigest()[:12]
    final = Path("/tmp") / f"{name}-{key}"
    python = final / "bin" / "python"
    if python.exists():
        return python
    building = final.with_name(f"{final.name}.build{os.getpid()}")
    new_python = make_venv(building)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([*pip_for(new_python), "install", "--quiet", *pins], env=env, timeout=900)
    try:
        building.rename(final)
    except OSError:  # another session finished first: use its venv
        subprocess.run(["rm", "-rf", str(building)], check=False)
    return python


def overlay_venv(path: Path, base_python: Path) -> Path:
    """A fresh venv at path that also sees base_python's site-packages (through a .pth
    file): what gets installed here stays here, the base is only read."""
    python = make_venv(path)
    (site_packages(python) / "_nblab_base.pth").write_text(f"{site_packages(base_python)}\n")
    return python
