"""Starts the AOT compile that test_aot_compile.py reads in the background (aot_job)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import aot_job
import pytest


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start it only when needed
def pytest_collection_modifyitems(session, config, items):
    mine = [item for item in items if item.path.name == aot_job.TEST_FILE]
    if not mine:
        return
    # last: the background compile overlaps everything else in the session
    items[:] = [item for item in items if item.path.name != aot_job.TEST_FILE] + mine
    if any(aot_job.FIXTURE in getattr(item, "fixturenames", ()) for item in mine):
        job = aot_job.AotJob(Path(tempfile.mkdtemp(prefix="nblab-aot-test-")))
        job.start()
        config.stash[aot_job.KEY] = job


def pytest_unconfigure(config):
    job = config.stash.get(aot_job.KEY, None)
    if job is not None:
        job.stop()
        shutil.rmtree(job.out.parent, ignore_errors=True)
