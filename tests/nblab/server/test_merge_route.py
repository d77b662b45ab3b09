"""POST nblab/api/merges: the sidebar's Merge action. Bad input is a 400 naming the field
with nothing written; a good one queues a merge run (its making is recorded here, not run:
tests/nblab/finetune makes real merges)."""

import json

import pytest

import nblab.merge.run


async def post(jp_fetch, body, expect):
    response = await jp_fetch(
        "nblab", "api", "merges", method="POST", body=json.dumps(body), raise_error=False
    )
    assert response.code == expect, response.body
    return json.loads(response.body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sweep": "s1", "method": "soup"}, '"method"'),
        ({"sweep": "s1", "method": "uniform", "top_k": 0}, '"top_k"'),
        ({"method": "uniform"}, '"sweep"'),
        ({"run_ids": ["nope", "nada"], "method": "greedy"}, '"members"'),
    ],
)
async def test_bad_merges_are_refused_naming_the_field(jp_fetch, make_run, store, body, field):
    make_run("a", "s1", "succeeded")
    make_run("b", "s1", "succeeded")
    before = len(store.runs())
    reply = await post(jp_fetch, body, 400)
    assert reply["message"].startswith(field)
    assert len(store.runs()) == before


async def test_a_merge_of_a_sweep_is_queued_and_started(jp_fetch, make_run, store, monkeypatch):
    a, b = make_run("a", "s1", "succeeded"), make_run("b", "s1", "succeeded")
    seen = []

    def plan(target, method, *, top_k=None, store=None):
        seen.append((target, method, top_k))
        return nblab.merge.run.MergeSpec(method, [a, b], [1, 1], "s1", name=f"merge-{method}")

    monkeypatch.setattr(nblab.merge.run, "plan_merge", plan)
    started = []
    monkeypatch.setattr(
        nblab.merge.run, "start_merge", lambda spec, store: started.append(spec) or "r9"
    )
    reply = await post(jp_fetch, {"sweep": "s1", "method": "greedy"}, 201)
    assert reply == {"run_id": "r9", "name": "merge-greedy", "method": "greedy", "members": [a, b]}
    assert seen == [("s1", "greedy", None)] and started[0].members == [a, b]


async def test_a_merge_run_is_not_rerun_as_a_training_job(jp_fetch, store):
    run_id = store.create_run("merge-uniform", 'name = "m"\n', "s1", kind="merge", steps=0)
    store.set_status(run_id, "failed", error="boom")
    response = await jp_fetch(
        "nblab", "api", "runs", run_id, "rerun", method="POST", body="{}", raise_error=False
    )
    assert response.code == 409 and "not a training run" in json.loads(response.body)["message"]
