"""Each route's happy path (and its 404), against a temporary run store of fake runs.

Jobs are never started here: the launch functions are replaced by recorders, except in
the cancel test, which stops a real process that holds a run open.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import nblab.batch.launcher
import nblab.batch.sweeps
import nblab.report


async def get(jp_fetch, *parts, **params):
    response = await jp_fetch("nblab", "api", *parts, params=params)
    assert response.code == 200
    return json.loads(response.body)


async def post(jp_fetch, *parts, body=None, expect=200):
    response = await jp_fetch(
        "nblab", "api", *parts, method="POST", body=json.dumps(body or {}), raise_error=False
    )
    assert response.code == expect, response.body
    return json.loads(response.body)


@pytest.fixture
def launched(monkeypatch):
    """Records launch_detached calls instead of starting jobs."""
    calls = []

    def record(run_ids, *, jobs=1, timeout=None, resume=False, store=None, spare=False):
        calls.append({"run_ids": list(run_ids), "jobs": jobs})
        return 12345

    monkeypatch.setattr(nblab.batch.launcher, "launch_detached", record)
    monkeypatch.setattr(nblab.batch.sweeps, "launch_detached", record)
    return calls


async def test_info_names_the_store(jp_fetch, nblab_home):
    info = await get(jp_fetch, "info")
    assert info["home"] == str(nblab_home)
    assert info["home_path"] is None  # the store is not under the server root here
    assert info["poll_interval"] == 0.05


async def test_runs_lists_and_filters(jp_fetch, make_run):
    a = make_run("a", "s1", "succeeded", losses=[3.0, 2.0])
    b = make_run("b", "s1", "failed")
    c = make_run("c", "s2", "queued")
    assert [r["run_id"] for r in await get(jp_fetch, "runs")] == [a, b, c]
    assert [r["run_id"] for r in await get(jp_fetch, "runs", sweep="s1")] == [a, b]
    assert [r["run_id"] for r in await get(jp_fetch, "runs", status="failed,queued")] == [b, c]
    row = (await get(jp_fetch, "runs", sweep="s1", status="succeeded"))[0]
    assert row["status"] == "succeeded" and row["step"] == 2 and row["ended"] is not None
    assert row["output_file"].endswith(f"runs/{a}/output.ipynb")
    assert row["output_path"] is None and row["output_exists"] is False


async def test_run_has_its_recipe_and_404s_when_unknown(jp_fetch, make_run):
    run_id = make_run("a", "s1", "running", losses=[1.0], steps=10)
    run = await get(jp_fetch, "runs", run_id)
    assert run["status"] == "running" and run["steps"] == 10 and run["step"] == 1
    assert run["recipe"] == 'name = "fake"\n'
    response = await jp_fetch("nblab", "api", "runs", "nope", raise_error=False)
    assert response.code == 404
    assert "unknown run_id 'nope'" in json.loads(response.body)["message"]


async def test_metrics_by_key_since_step_with_nan_as_null(jp_fetch, make_run):
    run_id = make_run("a", None, "diverged", losses=[3.0, 2.5, float("nan")])
    data = await get(jp_fetch, "runs", run_id, "metrics", keys="loss")
    assert list(data["keys"]) == ["loss"]
    assert data["keys"]["loss"] == {"steps": [1, 2, 3], "values": [3.0, 2.5, None], "total": 3}
    assert data["last_step"] == 3
    later = await get(jp_fetch, "runs", run_id, "metrics", since_step="1")
    assert sorted(later["keys"]) == ["loss", "lr"]
    assert later["keys"]["loss"]["steps"] == [2, 3]


async def test_metrics_are_downsampled_keeping_both_ends(jp_fetch, make_run):
    losses = [math.exp(-i / 1000) for i in range(5000)]
    run_id = make_run("long", None, "succeeded", losses=losses)
    loss = (await get(jp_fetch, "runs", run_id, "metrics", keys="loss"))["keys"]["loss"]
    assert loss["total"] == 5000
    assert 1900 <= len(loss["steps"]) <= 2000
    assert loss["steps"][0] == 1 and loss["steps"][-1] == 5000
    assert loss["steps"] == sorted(set(loss["steps"]))
    few = await get(jp_fetch, "runs", run_id, "metrics", keys="loss", max_points="10")
    assert len(few["keys"]["loss"]["steps"]) == 10


async def test_metrics_of_many_runs_come_in_one_request(jp_fetch, make_run):
    a = make_run("a", "s", "succeeded", losses=[3.0, 2.0, 1.0])
    b = make_run("b", "s", "running", losses=[float(i) for i in range(500)])
    make_run("c", "s", "queued")  # no values yet: left out
    data = (await get(jp_fetch, "series", keys="loss", max_points="50"))["runs"]
    assert sorted(data) == sorted([a, b])
    assert data[a]["keys"] == {"loss": {"steps": [1, 2, 3], "values": [3.0, 2.0, 1.0], "total": 3}}
    assert data[a]["last_step"] == 3
    loss_b = data[b]["keys"]["loss"]
    assert loss_b["total"] == 500 and len(loss_b["steps"]) == 50
    assert loss_b["steps"][0] == 1 and loss_b["steps"][-1] == 500
    only = (await get(jp_fetch, "series", run_id=a))["runs"]
    assert list(only) == [a] and sorted(only[a]["keys"]) == ["loss", "lr"]
    response = await jp_fetch(
        "nblab", "api", "series", params={"run_id": "nope"}, raise_error=False
    )
    assert response.code == 404 and b"nope" in response.body
    response = await jp_fetch(
        "nblab", "api", "series", params={"max_points": "1"}, raise_error=False
    )
    assert response.code == 400 and b"max_points" in response.body


async def test_sweeps_summarise_the_latest_run_of_each_point(jp_fetch, make_run):
    make_run("p1", "s1", "failed")
    make_run("p1", "s1", "succeeded")  # a rerun: the latest run of p1
    make_run("p2", "s1", "running")
    make_run("solo", None, "succeeded")
    sweeps = await get(jp_fetch, "sweeps")
    assert [s["name"] for s in sweeps] == ["s1"]
    assert sweeps[0]["points"] == 2 and sweeps[0]["runs"] == 3
    assert sweeps[0]["counts"] == {"running": 1, "succeeded": 1}
    assert sweeps[0]["done"] is False


async def test_sweep_has_its_runs_and_report_files(jp_fetch, make_run, nblab_home):
    ids = [make_run("p1", "my sweep", "succeeded"), make_run("p2", "my sweep", "queued")]
    sweep = await get(jp_fetch, "sweeps", "my sweep")
    assert [r["run_id"] for r in sweep["run_list"]] == ids
    assert sweep["report"]["exists"] is False
    assert sweep["report"]["html_file"] == str(nblab_home / "sweeps/my sweep/report.html")
    response = await jp_fetch("nblab", "api", "sweeps", "other", raise_error=False)
    assert response.code == 404


async def test_post_sweeps_starts_the_sweep_of_a_toml_file(jp_fetch, jp_root_dir, launched):
    (jp_root_dir / "sweeps").mkdir()
    (jp_root_dir / "sweeps" / "tiny.toml").write_text(
        textwrap.dedent(
            """
            name = "tiny"
            base = "gpt-tiny"
            [set]
            "train.steps" = 4
            [grid]
            "precision.preset" = ["bf16", "mxfp8"]
            """
        )
    )
    started = await post(
        jp_fetch, "sweeps", body={"path": "sweeps/tiny.toml", "jobs": 2}, expect=201
    )
    assert started["sweep"] == "tiny" and len(started["run_ids"]) == 2
    assert launched == [{"run_ids": started["run_ids"], "jobs": 2}]
    runs = await get(jp_fetch, "runs", sweep="tiny")
    assert [(r["status"], r["steps"]) for r in runs] == [("queued", 4), ("queued", 4)]


async def test_post_sweeps_reports_a_bad_sweep_file(jp_fetch, jp_root_dir, launched):
    (jp_root_dir / "bad.toml").write_text('name = "bad"\nbase = "gpt-tiny"\n[grid]\nnope = [1]\n')
    reply = await post(jp_fetch, "sweeps", body={"path": "bad.toml"}, expect=400)
    assert '"path" bad.toml' in reply["message"] and "nope" in reply["message"]
    assert launched == []


async def test_rerun_makes_a_new_run_of_a_failed_one(jp_fetch, make_run, launched):
    failed = make_run("p1", "s1", "failed", steps=7)
    done = make_run("p2", "s1", "succeeded")
    reply = await post(jp_fetch, "runs", failed, "rerun", expect=201)
    (new,) = reply["run_ids"]
    run = await get(jp_fetch, "runs", new)
    assert (run["name"], run["sweep"], run["steps"], run["status"]) == ("p1", "s1", 7, "queued")
    assert launched == [{"run_ids": [new], "jobs": 1}]
    reply = await post(jp_fetch, "runs", done, "rerun", expect=409)
    assert "succeeded" in reply["message"]


async def test_a_failed_evaluation_is_rerun_as_an_evaluation(jp_fetch, make_run, store, launched):
    source = make_run("trained", "s1", "succeeded", steps=12)
    sources = [{"run_id": source, "step": 12}]
    evaluation = store.create_run(
        "nvfp4", 'name = "e"\n', "s1", steps=12, kind="eval", sources=sources
    )
    store.set_status(evaluation, "failed", error="boom")
    (new,) = (await post(jp_fetch, "runs", evaluation, "rerun", expect=201))["run_ids"]
    run = await get(jp_fetch, "runs", new)
    assert (run["kind"], json.loads(run["sources"]), run["status"]) == ("eval", sources, "queued")
    assert launched == [{"run_ids": [new], "jobs": 1}]


async def test_sweep_rerun_reruns_only_failed_points(jp_fetch, make_run, launched):
    make_run("p1", "s1", "succeeded")
    make_run("p2", "s1", "cancelled")
    make_run("p3", "s1", "failed")
    make_run("p3", "s1", "succeeded")  # p3's latest run succeeded
    reply = await post(jp_fetch, "sweeps", "s1", "rerun", expect=201)
    names = [(await get(jp_fetch, "runs", r))["name"] for r in reply["run_ids"]]
    assert names == ["p2"]


async def test_report_is_built_then_served(jp_fetch, make_run, nblab_home, monkeypatch):
    def fake_build(sweep, *, store):
        folder = store.home / "sweeps" / sweep
        folder.mkdir(parents=True)
        (folder / "report.ipynb").write_text("{}")
        (folder / "report.html").write_text(f"<h1>{sweep}</h1>")

    monkeypatch.setattr(nblab.report, "build_report", fake_build)
    make_run("p1", "s1", "succeeded")
    response = await jp_fetch("nblab", "api", "sweeps", "s1", "report.html", raise_error=False)
    assert response.code == 404
    files = await post(jp_fetch, "sweeps", "s1", "report")
    assert files["exists"] is True
    assert files["ipynb_file"] == str(nblab_home / "sweeps" / "s1" / "report.ipynb")
    response = await jp_fetch("nblab", "api", "sweeps", "s1", "report.html")
    assert response.body == b"<h1>s1</h1>"
    assert response.headers["Content-Type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    assert "sandbox allow-scripts" in csp and "default-src 'none'" not in csp


async def test_report_of_an_unknown_sweep_is_404(jp_fetch):
    reply = await post(jp_fetch, "sweeps", "ghost", "report", expect=404)
    assert "unknown sweep 'ghost'" in reply["message"]


HOLDER = """
import signal, sys, time
from nblab.runs import RunStore

def stop(signum, frame):
    raise KeyboardInterrupt  # the writer records `cancelled`, as `nblab run` does

signal.signal(signal.SIGTERM, stop)
with RunStore(sys.argv[1]).writer(sys.argv[2], flush_every=None) as writer:
    print("running", flush=True)
    while True:
        time.sleep(0.05)
"""


async def test_cancel_stops_a_running_job(jp_fetch, store):
    run_id = store.create_run("held", 'name = "held"\n', "s1")
    job = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.home), run_id], stdout=subprocess.PIPE, text=True
    )
    try:
        assert job.stdout.readline().strip() == "running"
        assert store.run(run_id)["status"] == "running"
        reply = await post(jp_fetch, "runs", run_id, "cancel", body={"wait": 10})
        assert reply == {"statuses": {run_id: "cancelled"}}
        job.wait(timeout=10)  # the process is gone (TimeoutExpired otherwise)
        run = store.run(run_id)
        assert run["status"] == "cancelled" and "KeyboardInterrupt" in run["error"]
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGKILL)
            job.wait()


async def test_cancel_of_a_queued_run_and_of_an_unknown_one(jp_fetch, make_run):
    run_id = make_run("q", "s1")
    reply = await post(jp_fetch, "runs", run_id, "cancel", body={"wait": 0})
    assert reply == {"statuses": {run_id: "cancelled"}}
    await post(jp_fetch, "runs", "nope", "cancel", expect=404)
