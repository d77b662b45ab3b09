import importlib.metadata as md

import pipworld as pw
import pytest
import torch
from packaging.version import Version


@pytest.fixture(scope="session")
def floor_python():
    """A venv with only torch (this venv's version), the oldest triton that
    pyproject.toml accepts, numpy and pytest: a bare GPU machine, as far as imports go.
    Built once per pin list under /tmp and reused (pipworld.cached_venv)."""
    return pw.cached_venv(
        "nblab-floor",
        [
            f"torch=={Version(torch.__version__).public}",
            f"triton=={pw.declared_floor('triton')}",
            f"numpy=={md.version('numpy')}",
            f"pytest=={md.version('pytest')}",
        ],
    )
