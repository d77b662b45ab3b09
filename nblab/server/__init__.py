"""nblab's Jupyter server extension: an authenticated REST API and an events websocket
under `<base_url>/nblab/api/`, read by the JupyterLab sidebar (labext/).

Enabled on install by jupyter-config/server-config/nblab.json; the prebuilt
labextension ships in share/jupyter/labextensions/nblab (see pyproject.toml).
"""

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from nblab.server.app import NblabApp

    return [{"module": "nblab.server", "app": NblabApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    # `jupyter labextension develop .` reads this; installs use shared-data instead.
    return [{"src": "../labextension", "dest": "nblab"}]
