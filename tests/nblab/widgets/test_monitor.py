import math

import numpy as np
import pytest

from nblab.widgets import RunMonitor, downsample, resolve_runs, smooth
from nblab.widgets.sampling import downsample_indices

RECIPE = 'name = "fake"\n[train]\nsteps = 100\n'


# -- downsample ------------------------------------------------------------------------


def test_downsample_keeps_ends_and_every_bucket_extreme():
    rng = np.random.default_rng(0)
    y = rng.normal(size=10_002)
    y[1234], y[7777] = 50.0, -60.0  # spikes a stride would skip
    x = np.arange(len(y)) * 10
    xs, ys = downsample(x, y, 202)
    assert len(xs) <= 202
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (0, y[0], x[-1], y[-1])
    assert 12340 in xs and 77770 in xs
    # 100 buckets of the 10,000 inner points, 100 each: each bucket's min and max kept
    inner = y[1:-1].reshape(100, 100)
    kept = set(xs.tolist())
    for b in range(100):
        assert (np.argmin(inner[b]) + 1 + 100 * b) * 10 in kept
        assert (np.argmax(inner[b]) + 1 + 100 * b) * 10 in kept
    assert np.all(np.diff(xs) > 0)  # in order, no duplicates


def test_downsample_short_series_unchanged_and_nan_ignored():
    assert downsample_indices(np.arange(5.0), 10).tolist() == [0, 1, 2, 3, 4]
    y = np.array([1.0, np.nan, 5.0, np.nan, 2.0, np.nan, -3.0, 0.0])
    assert downsample_indices(y, 4).tolist() == [0, 2, 6, 7]  # one bucket: max 5, min -3


def test_smooth_is_debiased_ema():
    y = np.array([1.0, 3.0, math.nan, 5.0])
    out = smooth(y, 0.5)
    assert out[0] == 1.0
    assert out[1] == pytest.approx((0.5 * 1 + 3) / 1.5)
    assert math.isnan(out[2])
    assert np.array_equal(smooth(y[:2], 0.0), y[:2])


# -- RunMonitor against a temporary store ------------------------------------------


def _run(store, name, sweep="s", seed=None):
    """A running run; its own data path, so two runs are seeds of one configuration only
    when they share `name`'s part before the comma and pass a seed."""
    config = name.split(",")[0]
    recipe = RECIPE + f'[data]\npath = "{config}"\n'
    if seed is not None:
        recipe = recipe.replace("[train]\n", f"[train]\nseed = {seed}\n")
    run_id = store.create_run(name, recipe, sweep=sweep, steps=100)
    return run_id, store.writer(run_id, flush_every=None)


def test_monitor_picks_up_new_rows_on_refresh(store):
    a, wa = _run(store, "a")
    b, wb = _run(store, "b")
    for step in range(1, 11):
        wa.log_metrics(step, {"loss": 10.0 - step / 10, "tokens": 64.0 * step})
    wa.log_metrics(10, {"val_loss": 9.5})
    wa.flush()
    monitor = RunMonitor("s", autostart=False)  # a sweep name
    assert set(monitor.data) == {a, b}
    assert len(monitor.data[a]) == 11 and monitor.data[b].empty
    assert monitor.status == {a: "running", b: "running"}

    wa.log_metrics(11, {"loss": 8.0})
    wb.log_metrics(1, {"loss": 7.0})
    wa.flush(), wb.flush()
    assert monitor.refresh() == 2
    loss = monitor.data[a][monitor.data[a].key == "loss"]
    assert loss.step.tolist()[-1] == 11 and loss.value.tolist()[-1] == 8.0
    assert monitor.data[b].value.tolist() == [7.0]
    assert monitor.refresh() == 0  # nothing new: nothing read twice

    # a key written at a step already read (val_loss after loss at step 11) still arrives
    wa.log_metrics(11, {"val_loss": 7.9})
    wa.close()
    assert monitor.refresh() == 1
    val = monitor.data[a][monitor.data[a].key == "val_loss"]
    assert val.step.tolist() == [10, 11]
    assert monitor.status[a] == "succeeded"
    assert monitor.legend[a] == "✓ a (succeeded)"
    assert monitor.legend[b] == "▶ b (running)"
    # bokeh draws the labels themselves, also after a status change (a bare string set
    # later would name a data column and show "Invalid field" in the page)
    from bokeh.core.properties import value

    items = monitor._figure_parts["items"]
    assert items[a].label == value("✓ a (succeeded)")
    assert items[b].label == value("▶ b (running)")


def test_merge_and_eval_runs_are_drawn_as_points_and_named_by_kind(store):
    a, wa = _run(store, "a")
    for step in range(1, 6):
        wa.log_metrics(step, {"loss": 2.0 - step / 10})
    wa.log_metrics(5, {"val_loss": 1.6})
    wa.close()
    sources = [{"run_id": a, "step": 5}]
    for kind in ("merge", "eval"):
        run_id = store.create_run(f"{kind}-x", RECIPE, sweep="s", kind=kind, sources=sources)
        w = store.writer(run_id, flush_every=None)
        w.log_metrics(0, {"val_loss": 1.55})
        w.close()
    monitor = RunMonitor("s", keys=("loss", "val_loss"), autostart=False)
    glyphs = {}
    for r in monitor._figure_parts["figure"].renderers:
        glyphs[r.name] = type(r.glyph).__name__
    by_name = {monitor.names[rid]: rid for rid in monitor.names}
    assert monitor.legend[by_name["merge-x"]] == "✓ merge merge-x (succeeded)"
    assert monitor.legend[by_name["eval-x"]] == "✓ eval eval-x (succeeded)"
    assert glyphs["merge-x val_loss"] == glyphs["eval-x val_loss"] == "Scatter"
    assert glyphs["a loss"] == "Line"


def test_monitor_downsamples_and_switches_axes(store):
    a, wa = _run(store, "a")
    for step in range(1, 5001):
        wa.log_metrics(step, {"loss": 1.0 + (step == 2500) * 99.0, "tokens": 32.0 * step})
    wa.close()
    monitor = RunMonitor(a, keys=("loss",), points=100, autostart=False)
    frame = monitor.data[a]
    assert len(frame) <= 100 and frame.value.max() == 100.0  # the spike survives
    assert frame.step.iloc[0] == 1 and frame.step.iloc[-1] == 5000
    monitor.set_view(x="tokens")
    assert monitor.data[a].x.iloc[-1] == 32.0 * 5000
    monitor.set_view(log_y=True, smoothing=0.9)
    assert monitor.figure.y_scale.__class__.__name__ == "LogScale"
    assert monitor.data[a].value.max() < 100.0  # smoothed


def test_resolve_runs_accepts_ids_handles_and_names(store):
    a, wa = _run(store, "a", sweep="sw")
    wa.close()

    class Handle:
        run_ids = [a]

    assert resolve_runs(a).run_ids() == [a]
    assert resolve_runs([a]).run_ids() == [a]
    assert resolve_runs("sw").run_ids() == [a]
    assert resolve_runs(Handle(), store).run_ids() == [a]
    with pytest.raises(KeyError, match="neither a run id nor a sweep"):
        resolve_runs("nope")


def test_periodic_callback_refreshes_on_the_event_loop_and_stops(store):
    import asyncio

    a, wa = _run(store, "a")

    async def main():
        monitor = RunMonitor("s", interval_ms=100)  # a task on this loop, no thread
        for step in range(1, 4):
            wa.log_metrics(step, {"loss": 1.0 / step})
            wa.flush()
            await asyncio.sleep(0.3)
        seen = len(monitor.data[a])
        wa.close()
        await asyncio.sleep(0.5)
        return seen, monitor.running, monitor.status[a]

    assert asyncio.run(main()) == (3, False, "succeeded")


def test_monitor_draws_seeds_of_a_configuration_as_a_mean_and_band(store):
    runs = {}
    for config, offset in (("bf16", 0.0), ("fp4", 1.0)):
        for seed in (0, 1, 2):
            run_id, writer = _run(store, f"{config},seed={seed}", seed=seed)
            for step in (1, 2, 3):
                writer.log_metrics(step, {"loss": offset + step + seed / 10})
            writer.close()
            runs[(config, seed)] = run_id
    monitor = RunMonitor("s", keys=("loss",), autostart=False)
    assert monitor.grouped
    assert set(monitor.groups.values()) == {"bf16", "fp4"}
    frame = monitor.group_data["fp4"]
    assert frame.step.tolist() == [1, 2, 3] and frame.n.tolist() == [3, 3, 3]
    assert frame["mean"].tolist() == pytest.approx([2.1, 3.1, 4.1])
    assert frame.sd.tolist() == pytest.approx([0.1] * 3)
    # one legend entry per configuration; its band and line in one colour
    from bokeh.models import Line, VArea

    items = monitor._figure_parts["items"]
    assert set(items) == {"group:bf16", "group:fp4"}
    assert monitor.legend["group:fp4"] == "✓ fp4 (3 runs: 3 succeeded)"
    band, line = items["group:fp4"].renderers
    assert isinstance(band.glyph, VArea) and isinstance(line.glyph, Line)
    assert band.glyph.fill_color == line.glyph.line_color
    assert band.data_source.data["upper"].tolist() == pytest.approx([2.2, 3.2, 4.2])
    # the report's palette: configurations in order of their first run
    from nblab.groups import TAB10

    colors = [items[f"group:{c}"].renderers[1].glyph.line_color for c in ("bf16", "fp4")]
    assert colors == list(TAB10[:2])
    # group=False: every run on its own
    apart = RunMonitor("s", keys=("loss",), autostart=False, group=False)
    assert set(apart._figure_parts["items"]) == set(runs.values())
