"""Trained checkpoints for the evaluation tests: a gpt-debug run per test (cheap), and one
gpt-tiny run shared by every test (trained far enough that formats differ clearly)."""

from __future__ import annotations

import pytest
from eval_helpers import TINY, one_torch_thread

from nblab.runs import RunStore
from nblab.train.trainer import train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread, restored after each module (the rest of the
    suite keeps its own)."""
    with one_torch_thread():
        yield


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(home, run_id) of gpt-tiny trained in bf16, once for every test that asks; tests
    set NBLAB_HOME to home (tiny_store) and add their own evaluations to it."""
    home = tmp_path_factory.mktemp("tiny") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("NBLAB_HOME", str(home))
    try:
        with one_torch_thread():  # a session fixture: made before the module's _one_thread
            result = train(TINY, store=RunStore(home))
    finally:
        mp.undo()
    assert result.status == "succeeded"
    return home, result.run_id


@pytest.fixture
def tiny_store(tiny, monkeypatch) -> tuple[RunStore, str]:
    home, run_id = tiny
    monkeypatch.setenv("NBLAB_HOME", str(home))
    return RunStore(home), run_id
