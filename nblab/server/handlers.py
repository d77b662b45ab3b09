"""Thin handlers: parse the request, authorize, call nblab (through api / actions).

Every route is `@web.authenticated` and `@authorized` (resource "nblab"); the events
websocket authenticates in its own `get`. Routes, relative to `<base_url>`:

    GET  nblab/api/info                          store location, poll interval
    GET  nblab/api/runs?sweep=&status=           runs, oldest first
    GET  nblab/api/runs/{id}                     one run (with its recipe)
    GET  nblab/api/runs/{id}/metrics?keys=&since_step=&max_points=
    GET  nblab/api/series?keys=&max_points=&run_id=      metrics of many runs (default: all)
    POST nblab/api/runs/{id}/cancel              {"wait": seconds}?
    POST nblab/api/runs/{id}/rerun               a new run with the same recipe
    GET  nblab/api/sweeps                        one summary per sweep
    POST nblab/api/sweeps                        {"path": "x.toml", "jobs": N, "resume": b}
    GET  nblab/api/sweeps/{name}                 summary, runs, report files
    POST nblab/api/sweeps/{name}/rerun           rerun its failed / cancelled points
    POST nblab/api/sweeps/{name}/report          build report.ipynb + report.html
    POST nblab/api/merges                        {"sweep" | "run_ids", "method", "top_k"?}
    GET  nblab/api/sweeps/{name}/report.html     the built report, to open in a tab
    GET  nblab/api/events                        websocket (see events.py)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from nblab.runs import RunStore
from nblab.server import actions, api
from nblab.server.events import EventsSocket

RUN_ID = r"(?P<run_id>[0-9A-Za-z][0-9A-Za-z_-]*)"
SWEEP = r"(?P<sweep>[^/]+)"
CANCEL_WAIT_S = 15.0  # nblab.batch.cancellation.CANCEL_GRACE_S


class NblabHandler(ExtensionHandlerMixin, APIHandler):
    """Base: JSON replies, ApiError -> its status with {"message": ...}."""

    auth_resource = "nblab"

    @property
    def store(self) -> RunStore:
        return self.extensionapp.store

    @property
    def root(self) -> Path:
        return Path(self.serverapp.root_dir)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, allow_nan=False))

    async def call(self, function, *args, status: int = 200) -> None:
        """Run a blocking nblab call in a worker thread and reply with its result."""
        try:
            result = await asyncio.to_thread(function, *args)
        except api.ApiError as err:
            raise web.HTTPError(err.status, err.message, reason=_reason(err.status)) from None
        self.reply(result, status)

    def body(self, allowed: dict[str, Any]) -> dict[str, Any]:
        raw = self.request.body or b"{}"
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise web.HTTPError(400, f"the request body is not valid JSON: {err}") from None
        try:
            return api.check_body(data, allowed)
        except api.ApiError as err:
            raise web.HTTPError(err.status, err.message) from None

    def check(self, function, *args):
        """Run a validator; its ApiError becomes the HTTP error."""
        try:
            return function(*args)
        except api.ApiError as err:
            raise web.HTTPError(err.status, err.message, reason=_reason(err.status)) from None


def _reason(status: int) -> str | None:
    return {409: "Conflict"}.get(status)


class InfoHandler(NblabHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        app = self.extensionapp
        self.reply(
            {
                "home": str(self.store.home),
                "home_path": api.inside(self.root, self.store.home),
                "poll_interval": app.poll_interval,
                "max_points": api.MAX_POINTS,
            }
        )


class RunsHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        sweep = self.get_query_argument("sweep", None) or None
        status = self.check(api.check_statuses, self.get_query_arguments("status"))
        await self.call(api.list_runs, self.store, self.root, sweep, status)


class RunHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        await self.call(api.get_run, self.store, self.root, run_id)


class MetricsHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        keys = [k for v in self.get_query_arguments("keys") for k in v.split(",") if k] or None
        arg = self.get_query_argument
        since = self.check(api.check_int, "since_step", arg("since_step", None), 0)
        points = self.check(api.check_int, "max_points", arg("max_points", None), 2, 100_000)
        await self.call(api.get_metrics, self.store, run_id, keys, since, points or api.MAX_POINTS)


class SeriesHandler(NblabHandler):
    """Metrics of many runs in one request: the sidebar's sparklines, not a poll per run.
    (Not named `metrics`: galata's test pages answer any URL with /api/me in it.)"""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        keys = [k for v in self.get_query_arguments("keys") for k in v.split(",") if k] or None
        run_ids = [r for v in self.get_query_arguments("run_id") for r in v.split(",") if r]
        arg = self.get_query_argument
        points = self.check(api.check_int, "max_points", arg("max_points", None), 2, 100_000)
        await self.call(
            api.get_many_metrics, self.store, run_ids or None, keys, points or api.MAX_POINTS
        )


class CancelHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        data = self.body({"wait": (int, float)})
        wait = data.get("wait", CANCEL_WAIT_S)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 60:
            raise web.HTTPError(400, f'"wait" must be seconds from 0 to 60, got {wait!r}')
        await self.call(actions.cancel_run, self.store, run_id, float(wait))


class RerunHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        self.body({})
        await self.call(actions.rerun_run, self.store, run_id, status=201)


class SweepsHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.call(api.list_sweeps, self.store)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body({"path": str, "jobs": int, "resume": bool})
        if "path" not in data:
            raise web.HTTPError(400, '"path" is required: a .toml sweep file in the server root')
        toml = self.check(api.resolve_in_root, self.root, data["path"])
        jobs = self.check(api.check_jobs, data.get("jobs"))
        resume = self.check(api.check_bool, "resume", data.get("resume"))
        await self.call(actions.start_sweep, self.store, toml, jobs, resume, status=201)


class SweepHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def get(self, sweep: str) -> None:
        await self.call(api.get_sweep, self.store, self.root, sweep)


class SweepRerunHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def post(self, sweep: str) -> None:
        self.body({})
        await self.call(actions.rerun_sweep, self.store, sweep, status=201)


class MergesHandler(NblabHandler):
    """POST {"sweep": name} or {"run_ids": [...]}, "method", optional "top_k": a merge run."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body({"sweep": str, "run_ids": list, "method": str, "top_k": int})
        method = data.get("method")
        if not isinstance(method, str):
            raise web.HTTPError(400, '"method" is required: uniform, greedy, ties, ...')
        run_ids = data.get("run_ids")
        if run_ids is not None and not (
            isinstance(run_ids, list) and all(isinstance(r, str) for r in run_ids)
        ):
            raise web.HTTPError(400, '"run_ids" must be a list of run ids')
        sweep = data.get("sweep")
        if sweep is not None and not isinstance(sweep, str):
            raise web.HTTPError(400, '"sweep" must be a sweep name')
        top_k = data.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise web.HTTPError(400, f'"top_k" must be an integer, got {top_k!r}')
        await self.call(actions.start_merge, self.store, sweep, run_ids, method, top_k, status=201)


class ReportHandler(NblabHandler):
    @web.authenticated
    @authorized
    async def post(self, sweep: str) -> None:
        self.body({})
        await self.call(actions.build_report, self.store, self.root, sweep)


class ReportHtmlHandler(NblabHandler):
    """The report page itself. Its styles and plots need more than the API's
    `default-src 'none'`; like jupyter_server's file handler, scripts are confined to
    a sandbox (a unique origin), so they cannot call the server as the user."""

    @property
    def content_security_policy(self) -> str:
        return JupyterHandler.content_security_policy.fget(self) + "; sandbox allow-scripts"

    @web.authenticated
    @authorized
    def get(self, sweep: str) -> None:
        files = self.check(api.report_files, self.store, self.root, sweep)
        html = Path(files["html_file"])
        if not html.is_file() or api.inside(self.store.home, html) is None:
            raise web.HTTPError(404, f"sweep {sweep!r} has no report yet (POST .../report)")
        self.finish(html.read_bytes(), set_content_type="text/html; charset=utf-8")


def routes() -> list[tuple[str, type]]:
    """The extension's routes (ExtensionApp prefixes them with the base URL)."""
    api_url = "nblab/api"
    return [
        (rf"/{api_url}/info", InfoHandler),
        (rf"/{api_url}/runs", RunsHandler),
        (rf"/{api_url}/runs/{RUN_ID}", RunHandler),
        (rf"/{api_url}/runs/{RUN_ID}/metrics", MetricsHandler),
        (rf"/{api_url}/series", SeriesHandler),
        (rf"/{api_url}/runs/{RUN_ID}/cancel", CancelHandler),
        (rf"/{api_url}/runs/{RUN_ID}/rerun", RerunHandler),
        (rf"/{api_url}/sweeps", SweepsHandler),
        (rf"/{api_url}/merges", MergesHandler),
        (rf"/{api_url}/sweeps/{SWEEP}", SweepHandler),
        (rf"/{api_url}/sweeps/{SWEEP}/rerun", SweepRerunHandler),
        (rf"/{api_url}/sweeps/{SWEEP}/report", ReportHandler),
        (rf"/{api_url}/sweeps/{SWEEP}/report\.html", ReportHtmlHandler),
        (rf"/{api_url}/events", EventsSocket),
    ]
