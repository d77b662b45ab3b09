"""nblab's own notebooks: where they are, and how nblab executes notebooks (papermill
with a kernel client that cannot miss a message).

Where: inside the installed package (a wheel ships them as nblab/notebooks/) or at the
repository root (an editable checkout).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, List, Type

_PACKAGED = Path(__file__).resolve().parent / "notebooks"
_CHECKOUT = Path(__file__).resolve().parents[1] / "notebooks"

# Longest single wait on a kernel socket; a longer wait is made of such slices.
POLL_SLICE_S = 1.0
# As nbclient starts a kernel: IPython's history in memory, not in ~/.ipython
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


def notebook(name: str) -> Path:
    """The path of notebooks/<name>; FileNotFoundError names both places looked in."""
    for folder in (_PACKAGED, _CHECKOUT):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"notebook {name!r} is neither in {_PACKAGED} nor in {_CHECKOUT}")


class SlicedPollChannel(AsyncZMQSocketChannel):
    """A kernel channel that waits for a message in slices of at most POLL_SLICE_S.

    pyzmq's asyncio sockets wake on an edge-triggered descriptor, and now and then miss
    the wake-up of a message that has already arrived (zeromq/pyzmq#2173); a fresh poll
    finds it at once. Polled in one piece, papermill waited forever on a cell's reply
    that sat in its socket (here about 1 execution in 10 of a cell that started jobs).
    """

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else deadline - time.monotonic()
            try:
                return await super().get_msg(timeout=max(0.0, min(POLL_SLICE_S, left)))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class SlicedPollKernelClient(AsyncKernelClient):
    shell_channel_class = Type(SlicedPollChannel)
    iopub_channel_class = Type(SlicedPollChannel)
    stdin_channel_class = Type(SlicedPollChannel)
    control_channel_class = Type(SlicedPollChannel)


class KernelManager(AsyncKernelManager):
    """papermill's default kernel manager, with the SlicedPollKernelClient; it remembers
    its clients, whose channels stop_kernel() closes (papermill leaves them open in a
    kernel it was given)."""

    client_class = DottedObjectName("nblab.notebooks.SlicedPollKernelClient")
    client_factory = Type(SlicedPollKernelClient)
    clients = List()

    def client(self, **kwargs: Any) -> AsyncKernelClient:
        kc = super().client(**kwargs)
        self.clients.append(kc)
        return kc


def start_kernel(manager_class: type[KernelManager] = KernelManager, cwd: str | None = None):
    """A python3 kernel, started (its process launched; execute() waits until it is
    ready), for execute(..., km=...): papermill runs the notebook in it and leaves it
    running; stop_kernel() ends it."""
    from jupyter_core.utils import run_sync

    km = manager_class(kernel_name="python3")
    options = {"cwd": cwd} if cwd else {}
    run_sync(km.start_kernel)(extra_arguments=KERNEL_ARGS, **options)
    return km


def stop_kernel(km: KernelManager) -> None:
    """Kill km's kernel at once (it may be gone already) and remove its connection file."""
    from jupyter_core.utils import run_sync

    for kc in getattr(km, "clients", []):
        kc.stop_channels()
    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # noqa: BLE001 - gone already: only the files are left to remove
        km.cleanup_resources()


def import_papermill():
    """papermill (0.3 s to import), without the grammar nbformat's validator would build."""
    # jsonschema (under nbformat) imports rfc3987_syntax when it is installed, which
    # builds a grammar for 1.2 s per call; its IRI format checks never apply to
    # notebooks, so nblab goes without them.
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill

    return papermill


def execute(
    source: str | Path,
    output: str | Path,
    parameters: dict[str, Any],
    *,
    kernel_manager_class: type[KernelManager] = KernelManager,
    **options: Any,
):
    """papermill.execute_notebook(source, output, parameters) in the python3 kernel, with
    nblab's KernelManager (or a subclass); `options` go to papermill as they are
    (cwd, execution_timeout, log_output, ...). Returns the executed notebook."""
    papermill = import_papermill()
    options.setdefault("kernel_name", "python3")
    options.setdefault("progress_bar", False)
    return papermill.execute_notebook(
        str(source),
        str(output),
        parameters=parameters,
        kernel_manager_class=kernel_manager_class,
        **options,
    )
