"""MergeBuilder: a sweep's runs, a method, Merge: refused by field, or made in its own
process and shown beside its ingredients."""

from __future__ import annotations

from nblab.widgets import MergeBuilder


def test_merge_builder_refuses_by_field_then_merges_in_a_detached_process(runs, store):
    builder = MergeBuilder("ft", store=store)
    assert sorted(v for _, v in builder.runs.options) == sorted(runs.members.values())
    assert builder.target() == "ft"  # every run chosen: the sweep itself
    before = len(store.runs())
    builder.runs.value = (runs.members["lora"],)
    assert builder.merge() is None and builder.error.startswith("members")
    assert "two or more" in builder.status.value and len(store.runs()) == before
    builder.runs.value = (runs.members["lora"], runs.members["full"])
    builder.method.value = "uniform"
    run_id = builder.merge()
    assert run_id is not None and "merging 2 runs" in builder.status.value
    assert builder.wait(timeout=600) == "succeeded"
    run = store.run(run_id)
    assert (run["kind"], run["sweep"]) == ("merge", "ft")
    shown = builder.show_result()
    assert f"**{run['name']}** (uniform, 2 of 2 members)" in shown
    assert "succeeded" in builder.status.value
