"""The events websocket: run changes and new metric rows, pushed as they appear.

One `EventHub` per server polls the run store every `poll_interval` seconds, and only
while at least one socket is open. Each tick reads `store.runs()` (one indexed query),
compares it with the previous tick and pushes diffs:

    {"type": "snapshot", "runs": [run, ...],       to a socket when it opens, with the
     "metrics": {run_id: {key: {"steps", "values", "total"}}}}
                                                    history of its keys, downsampled to
                                                    SNAPSHOT_POINTS (sparklines)
    {"type": "run", "run": run}                     a run is new or changed (status,
                                                    step, steps, error, start/end)
    {"type": "metrics", "run_id": id, "last_step": n,
     "keys": {"loss": {"steps": [...], "values": [...]}}}
                                                    metric rows newer than the last push,
                                                    read only for runs whose step moved

A client sends {"type": "subscribe", "keys": ["loss", ...]} to choose the metric keys
it receives (default: loss). So one socket is all a client needs, however many runs
there are: no request per run. The REST routes series and runs/{id}/metrics serve
more history; clients merge by step.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket
from tornado.ioloop import PeriodicCallback

from nblab.server.api import RunPaths, plain, series_json

if TYPE_CHECKING:
    from pathlib import Path

    from nblab.runs import RunStore

WATCHED = ("name", "sweep", "status", "step", "steps", "started", "ended", "error")
DEFAULT_KEYS = ("loss",)
MAX_KEYS = 32
SNAPSHOT_POINTS = 100  # per run and key in a snapshot: a sparkline's worth (80 px)


class EventHub:
    """Polls the store while sockets are open and fans the diffs out to them."""

    def __init__(self, store: RunStore, root_dir: Path, poll_interval: float, log):
        self.store = store
        self.root_dir = root_dir
        self.poll_interval = poll_interval
        self.log = log
        self.sockets: set[EventsSocket] = set()
        self._seen: dict[str, tuple] | None = None  # run_id -> WATCHED values, last tick
        self._metric_step: dict[str, int | None] = {}  # run_id -> last step pushed
        self._timer: PeriodicCallback | None = None
        self._busy = False

    # -- sockets ----------------------------------------------------------------------

    async def add(self, socket: EventsSocket) -> None:
        self.sockets.add(socket)
        runs, metrics = await asyncio.to_thread(self._snapshot, sorted(socket.keys))
        socket.send({"type": "snapshot", "runs": runs, "metrics": metrics})
        if self._timer is None:
            self._timer = PeriodicCallback(self.tick, self.poll_interval * 1000)
            self._timer.start()

    def remove(self, socket: EventsSocket) -> None:
        self.sockets.discard(socket)
        if not self.sockets and self._timer is not None:
            self._timer.stop()
            self._timer = None
            self._seen = None  # the next socket starts from a fresh snapshot

    def stop(self) -> None:
        for socket in list(self.sockets):
            socket.close()
        self.sockets.clear()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    # -- polling ----------------------------------------------------------------------

    def _snapshot(self, keys: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every run now and the history of `keys` (downsampled); for the first socket
        also the baseline that ticks diff against, so a change right after the snapshot
        is pushed, not mistaken for the baseline."""
        rows = self.store.rows()
        if self._seen is None:
            self._seen = {row["run_id"]: tuple(row[c] for c in WATCHED) for row in rows}
            self._metric_step = {row["run_id"]: row["step"] for row in rows}
        found = self.store.series([r["run_id"] for r in rows], keys) if rows else {}
        metrics = {run_id: series_json(s, SNAPSHOT_POINTS) for run_id, s in found.items()}
        paths = RunPaths(self.store, self.root_dir)
        return [paths.json(r) for r in rows], metrics

    def _poll(self, keys: set[str]) -> list[dict[str, Any]]:
        """One tick's messages (run in a worker thread: SQLite reads block)."""
        rows = self.store.rows()
        first = self._seen is None
        seen = self._seen or {}
        paths = RunPaths(self.store, self.root_dir)
        messages, moved = [], []
        for row in rows:
            run_id = row["run_id"]
            state = tuple(row[c] for c in WATCHED)
            if first:  # history is the REST routes' job: push from here on
                self._metric_step[run_id] = row["step"]
                continue
            if seen.get(run_id) != state:
                messages.append({"type": "run", "run": paths.json(row)})
            if row["step"] is not None and row["step"] != self._metric_step.get(run_id, -1):
                moved.append(run_id)
        self._seen = {row["run_id"]: tuple(row[c] for c in WATCHED) for row in rows}
        if not moved:
            return messages
        # one read for every run that moved, from the earliest step one of them still needs
        since = {run_id: self._metric_step.get(run_id) for run_id in moved}
        low = None if None in since.values() else min(since.values())
        found = self.store.series(moved, sorted(keys), since_step=low)
        for run_id in moved:
            by_key = {}
            for key, s in found.get(run_id, {}).items():
                keep = s.step > (-1 if since[run_id] is None else since[run_id])
                if keep.any():
                    by_key[key] = {
                        "steps": [int(v) for v in s.step[keep]],
                        "values": [plain(v) for v in s.value[keep]],
                    }
            if by_key:
                last = max(steps["steps"][-1] for steps in by_key.values())
                self._metric_step[run_id] = last
                messages.append(
                    {"type": "metrics", "run_id": run_id, "last_step": last, "keys": by_key}
                )
        return messages

    async def tick(self) -> None:
        if self._busy or not self.sockets:
            return
        self._busy = True
        try:
            keys = set().union(*(s.keys for s in self.sockets))
            messages = await asyncio.to_thread(self._poll, keys)
        except Exception:  # a locked or missing database must not kill the timer
            self.log.exception("nblab events: polling the run store failed")
            return
        finally:
            self._busy = False
        for message in messages:
            for socket in list(self.sockets):
                socket.send(message)


class EventsSocket(
    WebSocketMixin, ExtensionHandlerMixin, JupyterHandler, websocket.WebSocketHandler
):
    """GET <base_url>/nblab/api/events: the websocket (authenticated and authorized)."""

    auth_resource = "nblab"

    @property
    def hub(self) -> EventHub:
        return self.extensionapp.hub

    async def pre_get(self) -> None:
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "read", self.auth_resource)
        )
        if not allowed:
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        result = super().get(*args, **kwargs)
        if result is not None:
            await result

    async def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self.keys: set[str] = set(DEFAULT_KEYS)
        await self.hub.add(self)

    def on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        keys = data.get("keys") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("type") != "subscribe"
            or not isinstance(keys, list)
            or not all(isinstance(k, str) and k for k in keys)
            or len(keys) > MAX_KEYS
        ):
            self.send({"type": "error", "message": 'expected {"type": "subscribe", "keys": [...]}'})
            return
        self.keys = set(keys)

    def on_close(self) -> None:
        self.hub.remove(self)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(message, allow_nan=False))
        except websocket.WebSocketClosedError:
            self.hub.remove(self)
