"""The launcher interface: what turns queued runs into running jobs.

LocalLauncher (nblab.batch.launcher) and SlurmLauncher (nblab.batch.slurm) implement it;
both import it from here, so neither imports the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from nblab.runs import RunStore


class Launcher(ABC):
    """Starts queued runs of a RunStore as jobs. Status lives in the store."""

    store: RunStore

    @abstractmethod
    def submit(self, run_ids: Iterable[str]) -> None:
        """Queue these (queued) runs for execution; return at once."""

    @abstractmethod
    def poll(self) -> dict[str, str]:
        """{run_id: status} of every submitted run, read from the store."""

    @abstractmethod
    def cancel(self, run_id: str) -> None:
        """Stop one run: drop it if it has not started, else stop its job."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted run has ended (True) or `timeout` s passed (False)."""
