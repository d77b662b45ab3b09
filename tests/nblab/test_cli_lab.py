"""`nblab lab` opens JupyterLab on a copy of the quickstart in the current folder;
`nblab lab --help` only prints."""

import json
import os
import sys

from nblab.cli import main


def test_lab_copies_the_quickstart_and_starts_jupyterlab(tmp_path, monkeypatch):
    started = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execv", lambda path, argv: started.append(argv))
    main(["lab", "--no-browser", "--port", "8899"])
    copy = tmp_path / "nblab-quickstart.ipynb"
    assert "RecipeBuilder" in "".join(
        "".join(c["source"]) for c in json.loads(copy.read_text())["cells"]
    )
    assert started == [
        [sys.executable, "-m", "jupyterlab", copy.name, "--no-browser", "--port", "8899"]
    ]
    copy.write_text("{}")  # a user's edits survive the next start
    main(["lab"])
    assert copy.read_text() == "{}"


def test_lab_help_has_no_side_effects_and_ends_with_jupyterlab_options(tmp_path):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "nblab", "lab", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing copied, nothing started
    ours = done.stdout.index("with what nblab adds")
    assert "nblab-quickstart.ipynb" in done.stdout[ours:]
    jupyterlab = done.stdout.index("JupyterLab - An extensible")
    assert ours < jupyterlab < done.stdout.index("--port")
