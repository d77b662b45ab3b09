"""`nblab lab` opens JupyterLab on a copy of the quickstart in the current folder."""

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
