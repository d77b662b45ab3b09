"""The events websocket: a snapshot on open, then run changes and new metric rows."""

import asyncio
import json

from nblab.server.events import SNAPSHOT_POINTS


async def receive(ws, kind, timeout=5.0):
    """The next message of type `kind` (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no {kind!r} message within {timeout}s"
        raw = await asyncio.wait_for(ws.read_message(), left)
        assert raw is not None, "the socket closed"
        message = json.loads(raw)
        if message["type"] == kind:
            return message


async def test_snapshot_then_status_change_then_metrics(jp_ws_fetch, store, make_run):
    run_id = make_run("p1", "s1", "queued", steps=4)
    ws = await jp_ws_fetch("nblab", "api", "events")
    try:
        snapshot = await receive(ws, "snapshot")
        assert [(r["run_id"], r["status"]) for r in snapshot["runs"]] == [(run_id, "queued")]

        writer = store.writer(run_id, flush_every=None)  # queued -> running
        update = await receive(ws, "run")
        assert update["run"]["run_id"] == run_id and update["run"]["status"] == "running"

        writer.log_metrics(1, {"loss": 2.5, "lr": 0.1})
        writer.log_metrics(2, {"loss": float("nan"), "lr": 0.1})
        writer.flush()
        metrics = await receive(ws, "metrics")
        assert metrics["run_id"] == run_id and metrics["last_step"] == 2
        assert metrics["keys"] == {"loss": {"steps": [1, 2], "values": [2.5, None]}}

        writer.close("succeeded")
        update = await receive(ws, "run")
        assert update["run"]["status"] == "succeeded" and update["run"]["step"] == 2
    finally:
        ws.close()


async def test_the_snapshot_carries_each_runs_loss_history(jp_ws_fetch, make_run):
    """One socket is all the sidebar needs for its sparklines: no request per run."""
    short = make_run("short", "s1", "succeeded", losses=[3.0, float("nan"), 1.0])
    long = make_run("long", "s1", "succeeded", losses=[float(i) for i in range(1000)])
    make_run("empty", "s1", "queued")
    ws = await jp_ws_fetch("nblab", "api", "events")
    try:
        snapshot = await receive(ws, "snapshot")
        assert len(snapshot["runs"]) == 3 and sorted(snapshot["metrics"]) == sorted([short, long])
        assert snapshot["metrics"][short] == {
            "loss": {"steps": [1, 2, 3], "values": [3.0, None, 1.0], "total": 3}
        }
        loss = snapshot["metrics"][long]["loss"]  # downsampled, both ends kept
        assert loss["total"] == 1000 and len(loss["steps"]) == SNAPSHOT_POINTS
        assert loss["steps"][0] == 1 and loss["steps"][-1] == 1000
    finally:
        ws.close()


async def test_runs_that_move_in_one_tick_each_get_their_rows(jp_ws_fetch, store, make_run):
    a, b = make_run("a", "s1", "running", losses=[5.0]), make_run("b", "s1", "running")
    ws = await jp_ws_fetch("nblab", "api", "events")
    try:
        await receive(ws, "snapshot")
        await asyncio.sleep(0.1)  # the hub's baseline
        writers = {a: store.writer(a, flush_every=None), b: store.writer(b, flush_every=None)}
        writers[a].log_metrics(2, {"loss": 4.0})
        writers[a].log_metrics(3, {"loss": 3.0})
        writers[b].log_metrics(1, {"loss": 9.0})
        for writer in writers.values():
            writer.flush()
        got = {}
        while len(got) < 2:
            message = await receive(ws, "metrics")
            got[message["run_id"]] = message
        assert got[a]["keys"] == {"loss": {"steps": [2, 3], "values": [4.0, 3.0]}}
        assert got[a]["last_step"] == 3
        assert got[b]["keys"] == {"loss": {"steps": [1], "values": [9.0]}}
    finally:
        ws.close()


async def test_subscribe_chooses_the_metric_keys(jp_ws_fetch, store, make_run):
    run_id = make_run("p1", "s1", "running")
    ws = await jp_ws_fetch("nblab", "api", "events")
    try:
        await receive(ws, "snapshot")
        await ws.write_message(json.dumps({"type": "subscribe", "keys": ["lr"]}))
        await ws.write_message(json.dumps({"type": "subscribe", "keys": "lr"}))
        error = await receive(ws, "error")
        assert "subscribe" in error["message"]
        writer = store.writer(run_id, flush_every=None)
        writer.log_metrics(5, {"loss": 1.0, "lr": 0.2})
        writer.flush()
        metrics = await receive(ws, "metrics")
        assert metrics["keys"] == {"lr": {"steps": [5], "values": [0.2]}}
    finally:
        ws.close()


async def test_a_new_run_is_pushed(jp_ws_fetch, make_run):
    ws = await jp_ws_fetch("nblab", "api", "events")
    try:
        assert (await receive(ws, "snapshot"))["runs"] == []
        await asyncio.sleep(0.1)  # let the hub take its first look
        run_id = make_run("p9", "s2")
        update = await receive(ws, "run")
        assert update["run"]["run_id"] == run_id and update["run"]["sweep"] == "s2"
    finally:
        ws.close()
