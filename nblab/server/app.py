"""The nblab ExtensionApp: one run store and one events hub per Jupyter server."""

from __future__ import annotations

from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Unicode

from nblab.runs import RunStore
from nblab.server.events import EventHub
from nblab.server.handlers import routes


class NblabApp(ExtensionApp):
    """Serves `<base_url>/nblab/api/` (see nblab.server.handlers)."""

    name = "nblab"
    load_other_extensions = True

    home = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The run store's folder (default: $NBLAB_HOME, else ~/.nblab).",
    )
    poll_interval = Float(
        1.0,
        config=True,
        help="Seconds between two reads of the run store while an events socket is open.",
    )

    def initialize_settings(self) -> None:
        self.store = RunStore(self.home)
        self.hub = EventHub(self.store, Path(self.serverapp.root_dir), self.poll_interval, self.log)
        self.log.info("nblab: run store %s, events every %gs", self.store.home, self.poll_interval)

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        self.hub.stop()
