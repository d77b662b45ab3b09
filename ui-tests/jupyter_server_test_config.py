"""Server configuration for the galata tests: galata's defaults, root allowed (CI runs
as root), nblab over a run store seeded here (see nblab_store.py)."""

import os
import sys
from pathlib import Path

from jupyterlab.galata import configure_jupyter_server

sys.path.insert(0, str(Path(__file__).parent))
from nblab_store import seed  # noqa: E402

configure_jupyter_server(c)  # noqa: F821
c.ServerApp.allow_root = True  # noqa: F821
c.ServerApp.port = int(os.environ.get("NBLAB_UI_PORT", "8871"))  # noqa: F821

HOME = Path(os.environ.get("NBLAB_UI_HOME", Path(__file__).parent / ".nblab-home"))
seed(HOME)
c.NblabApp.home = str(HOME)  # noqa: F821
c.NblabApp.poll_interval = 0.5  # noqa: F821
