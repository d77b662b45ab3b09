import pytest

from nblab.runs import RunStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh run store under a temporary NBLAB_HOME (what the widgets open by default)."""
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore()
