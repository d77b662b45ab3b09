"""Fixtures for the server extension: a Jupyter server at base URL /a%40b/ with nblab
enabled over a temporary run store.

pytest-jupyter's fixtures and hooks are imported here rather than named in
`pytest_plugins = ("pytest_jupyter.jupyter_server",)`: pytest >= 8 refuses
`pytest_plugins` outside the top-level conftest, and importing keeps its autouse
fixtures and async-test hooks to this folder.
"""

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403

from nblab.runs import RunStore


@pytest.fixture
def jp_base_url():
    return "/a%40b/"


@pytest.fixture
def nblab_home(tmp_path):
    return tmp_path / "nblab-home"


@pytest.fixture
def jp_server_config(nblab_home):
    return {
        "ServerApp": {"jpserver_extensions": {"nblab.server": True}},
        "NblabApp": {"home": str(nblab_home), "poll_interval": 0.05},
    }


@pytest.fixture
def store(nblab_home):
    return RunStore(nblab_home)


@pytest.fixture
def make_run(store):
    """make_run(name, sweep, status, losses, steps) -> run_id: a fake run written through
    the store as a job writes it (status, then metric rows at steps 1, 2, ...)."""
    return lambda *args, **kwargs: fake_run(store, *args, **kwargs)


def fake_run(store, name, sweep=None, status="queued", losses=(), steps=None):
    run_id = store.create_run(name, 'name = "fake"\n', sweep, steps=steps)
    if status != "queued" or losses:
        writer = store.writer(run_id, flush_every=None)  # marks it running, by this process
        for step, loss in enumerate(losses, start=1):
            writer.log_metrics(step, {"loss": loss, "lr": 1e-3})
        writer.flush()
        if status != "running":
            writer.close(status)
    return run_id
