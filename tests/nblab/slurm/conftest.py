"""A real one-node Slurm cluster for the Slurm launcher tests (scripts/slurm-up.sh)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_DIR = os.environ.get("NBLAB_SLURM_DIR", "/tmp/nblab-slurm")
EXIT_CANNOT_INSTALL = 3  # slurm-up.sh: Slurm cannot be installed here


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster once per session (installing Slurm if missing); stop it after.
    Skips only when Slurm cannot be installed; a cluster that fails to start fails."""
    env = dict(os.environ, NBLAB_SLURM_DIR=CLUSTER_DIR)
    up = subprocess.run(
        [str(ROOT / "scripts" / "slurm-up.sh")], env=env, capture_output=True, text=True
    )
    if up.returncode == EXIT_CANNOT_INSTALL:
        pytest.skip(f"Slurm cannot be installed here: {up.stderr.strip()}")
    if up.returncode != 0:
        pytest.fail(f"scripts/slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{CLUSTER_DIR}/slurm.conf"
    yield os.environ["SLURM_CONF"]
    subprocess.run([str(ROOT / "scripts" / "slurm-down.sh")], env=env, capture_output=True)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
