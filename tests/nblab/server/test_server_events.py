"""The events websocket: a snapshot on open, then run changes and new metric rows."""

import asyncio
import json


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
