"""The built wheel installs beside a user's torch, and works beside a real one.

- pip's resolver, offline, against the ranges pyproject.toml declares: a venv that
  already holds torch 2.11.0 and triton 3.6.0 (tiny stand-ins, as a CUDA machine with
  torch 2.11 has them) keeps both, although torch 2.13.0 and triton 3.9.0 are on offer
  (pipworld.standins_of_this_env). The same check against the old exact pins replaces
  torch, so the check can fail.
- A real install of the wheel beside the real torch 2.13.0 (CPU) and the oldest triton
  of the declared range: `import nblab, nblab_kernels` from the installed files, the
  same quantized bits as this checkout, and the kernels' bit-exact suite under the
  Triton interpreter with that triton. The venv of torch, triton, numpy and pytest is
  built once per pin list under /tmp and reused (pipworld.cached_venv).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pipworld as pw
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import nblab_kernels as nk

CONSTRAINTS = pw.REPO / "constraints.txt"
# the torch a CUDA 2.11 wheel would bring, and the triton it pins (Linux)
USER_TORCH, USER_TRITON = "2.11.0", "3.6.0"
QUANTIZED = ("mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "int8_row")


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[pw.normalize(name)] = version
    return out


def test_constraints_pin_every_dependency_inside_its_declared_range():
    reqs, pinned = pw.declared(), pins()
    assert not set(pinned) - set(reqs), "constraints.txt pins what pyproject.toml never asks"
    unpinned = set(reqs) - set(pinned) - {"numpy"}  # numpy floats, as it always has
    assert not unpinned, f"pyproject.toml dependencies without a pin: {sorted(unpinned)}"
    for name, version in pinned.items():
        assert reqs[name].specifier.contains(version), (name, version, str(reqs[name]))
    for name in ("torch", "triton"):  # ranges, so that a user's own install is kept
        assert reqs[name].specifier.contains(USER_TORCH if name == "torch" else USER_TRITON)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return pw.build_nblab_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Stand-ins of every distribution of this venv: the resolver's whole index."""
    path = tmp_path_factory.mktemp("world")
    offered = pw.standins_of_this_env(path)
    # the resolver could always pick these instead of the user's torch and triton
    assert Version(offered["torch"]) > Version(USER_TORCH)
    assert Version(offered["triton"]) > Version(USER_TRITON)
    return path


def _with_requirements(wheel: Path, dest: Path, replace: dict[str, str]) -> Path:
    """A copy of the wheel whose METADATA has the Requires-Dist of each name in
    `replace` swapped for the given requirement (the RECORD hashes follow)."""
    with zipfile.ZipFile(wheel) as zf:
        files = {n: zf.read(n) for n in zf.namelist() if not n.endswith(".dist-info/RECORD")}
    meta_name = next(n for n in files if n.endswith(".dist-info/METADATA"))
    lines = files[meta_name].decode().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("Requires-Dist: "):
            name = pw.normalize(Requirement(line.removeprefix("Requires-Dist: ")).name)
            if name in replace:
                lines[i] = f"Requires-Dist: {replace[name]}"
    files[meta_name] = "\n".join(lines).encode()
    return pw.write_wheel(dest / wheel.name, files)


def test_pip_keeps_a_users_torch_and_triton(wheel, world, tmp_path):
    user = tmp_path / "user-wheels"
    user.mkdir()
    pw.standin_wheel(
        user, "torch", USER_TORCH, [f'triton=={USER_TRITON}; platform_system == "Linux"']
    )
    pw.standin_wheel(user, "triton", USER_TRITON)
    python = pw.make_venv(tmp_path / "venv")
    cmd = [*pw.pip_for(python), "install", "--quiet", "--no-index", "--no-deps"]
    pw.run([*cmd, *sorted(user.glob("*.whl"))], env=pw.isolated_pip_env())

    plan = pw.dry_run_install(python, wheel, [world])
    assert "nblab" in plan and "transformers" in plan  # the whole graph was resolved
    assert "torch" not in plan, f"pip would replace torch {USER_TORCH} by {plan['torch']}"
    assert "triton" not in plan, f"pip would replace triton {USER_TRITON} by {plan['triton']}"

    # the same wheel with the exact pins nblab declared before: torch is replaced
    pinned = _with_requirements(
        wheel, tmp_path, {"torch": "torch==2.13.0", "triton": "triton==3.9.0"}
    )
    plan = pw.dry_run_install(python, pinned, [world])
    assert Version(plan["torch"]).public == "2.13.0" and plan["triton"] == "3.9.0"


@pytest.fixture(scope="module")
def beside_real_torch(wheel, floor_python, tmp_path_factory) -> Path:
    """The wheel, really installed (without its dependencies: the resolver is the test
    above) into a venv that sees the real torch of this venv's version, the oldest
    triton of the declared range, and this venv's numpy and pytest (conftest.py)."""
    python = pw.overlay_venv(tmp_path_factory.mktemp("beside") / "venv", floor_python)
    pw.run(
        [*pw.pip_for(python), "install", "--quiet", "--no-deps", wheel], env=pw.isolated_pip_env()
    )
    return python


CHECK = """
import hashlib, json, sys
import torch, triton
import nblab, nblab_kernels as nk
x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
digest = {}
for name in sys.argv[1:]:
    q = nk.quantize(x, name, backend="reference")
    h = hashlib.sha256()
    for t in (q.codes, q.scale, q.tensor_scale, nk.fake_quantize(x, name, backend="reference")):
        if t is not None:
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest[name] = h.hexdigest()
print(json.dumps({"files": [nblab.__file__, nk.__file__], "torch": torch.__version__,
                  "triton": triton.__version__, "digest": digest}))
"""


def _digests(x: torch.Tensor) -> dict[str, str]:
    out = {}
    for name in QUANTIZED:
        q = nk.quantize(x, name, backend="reference")
        h = hashlib.sha256()
        for t in (q.codes, q.scale, q.tensor_scale, nk.fake_quantize(x, name, backend="reference")):
            if t is not None:
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def test_the_installed_wheel_imports_and_quantizes_beside_real_torch(
    beside_real_torch, world, wheel, tmp_path
):
    env = pw.isolated_pip_env()
    out = pw.run([beside_real_torch, "-c", CHECK, *QUANTIZED], env=env, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    venv = beside_real_torch.parent.parent
    for path in got["files"]:  # the installed files, never this checkout
        assert Path(path).is_relative_to(venv), path
    assert got["torch"] == torch.__version__
    assert Version(got["triton"]) == Version(pw.declared_floor("triton"))
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    assert got["digest"] == _digests(x)  # the same bits as this checkout's reference
    # and pip keeps this real torch too
    plan = pw.dry_run_install(beside_real_torch, wheel, [world])
    assert "torch" not in plan and "triton" not in plan and "transformers" in plan


# the bit-exact suite on small shapes: every preset x input dtype x rounding, and the
# Hadamard layouts (about 150 cases, 10-25 s in the interpreter on 2 cores)
FLOOR_SUITE = (
    "tests/kernels/triton/test_triton_quantize.py::test_preset_matches_reference",
    "tests/kernels/triton/test_triton_hadamard_stats.py::test_hadamard_layouts",
)


def test_kernels_are_bit_exact_with_the_oldest_triton(beside_real_torch, tmp_path):
    env = {**pw.isolated_pip_env(), "TRITON_INTERPRET": "1"}
    cmd = [beside_real_torch, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-W", "ignore::pytest.PytestConfigWarning", "--rootdir", pw.REPO]
    proc = pw.run([*cmd, *(pw.REPO / t for t in FLOOR_SUITE)], env=env, cwd=tmp_path)
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]
    code = "import triton, nblab_kernels as k; print(triton.__version__, k.__file__)"
    version, kernels = pw.run([beside_real_torch, "-c", code], env=env, cwd=tmp_path).stdout.split()
    assert Version(version) == Version(pw.declared_floor("triton"))
    assert Path(kernels).is_relative_to(beside_real_torch.parent.parent)  # the installed copy
