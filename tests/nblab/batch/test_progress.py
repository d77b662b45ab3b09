"""Progress of batch runs (nblab.batch.progress.watch) against a scripted fake store,
and `nblab demo --formats-only`. No jobs run here: the watcher tests take milliseconds,
the demo table a few seconds (imports and every preset on a 256x256 tensor)."""

import io

import pandas as pd
import pytest
from tqdm import tqdm

from nblab.batch.progress import watch
from nblab.cli import main as cli
from nblab.runs import RunStore

COLUMNS = ["run_id", "name", "sweep", "status", "step", "steps", "error"]


class FakeStore:
    """Answers `runs()` with the next frame of a script (the last one forever after)."""

    def __init__(self, script, interrupt_at: int | None = None):
        self.script = script
        self.calls: list[str | None] = []  # the sweep argument of each call
        self.interrupt_at = interrupt_at

    def runs(self, sweep=None, status=None):
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        rows = self.script[min(len(self.calls), len(self.script) - 1)]
        self.calls.append(sweep)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return frame.astype({"step": "Int64", "steps": "Int64"})


class Handle:
    """What `watch` uses of a SweepHandle."""

    def __init__(self, store, run_ids, sweep="formats"):
        self.store, self.run_ids, self.sweep = store, run_ids, sweep


def row(i, status, step=None, error=None, steps=10):
    name = ["preset=bf16", "preset=nvfp4", "preset=mxfp4"][i]
    return dict(run_id=f"r{i}", name=name, sweep="formats", status=status, step=step,
                steps=steps, error=error)  # fmt: skip


# bf16 runs and succeeds; nvfp4 waits in the queue, starts, then fails at step 4.
ADVANCE_FINISH_FAIL = [
    [row(0, "queued"), row(1, "queued")],
    [row(0, "running", 0), row(1, "queued")],
    [row(0, "running", 5), row(1, "running", 0)],
    [row(0, "succeeded", 10), row(1, "running", 3)],
    [row(0, "succeeded", 10), row(1, "failed", 4, "RuntimeError: boom")],
]


class TtyIO(io.StringIO):
    def isatty(self):
        return True


def open_bars() -> int:
    return len(getattr(tqdm, "_instances", ()))


# ---------------------------------------------------------------------------
# Plain lines (stderr is not a terminal)
# ---------------------------------------------------------------------------


def test_plain_lines_follow_runs_advancing_finishing_and_failing():
    store, out = FakeStore(ADVANCE_FINISH_FAIL), io.StringIO()
    frame = watch(["r0", "r1"], store, interval=0, stream=out, line_every=0)

    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text  # nothing a CI log would mangle
    lines = [line.split("] ", 1)[1] for line in text.splitlines()]
    assert lines == [
        "preset=bf16: running",
        "preset=bf16: step 5/10",
        "preset=nvfp4: running",
        "preset=bf16: succeeded at step 10/10 in 0s",
        "preset=nvfp4: step 3/10",
        "preset=nvfp4: failed at step 4/10 in 0s: RuntimeError: boom",
    ]
    assert len(store.calls) == len(ADVANCE_FINISH_FAIL)  # stops at the first all-ended read
    assert list(frame.run_id) == ["r0", "r1"]
    assert list(frame.status) == ["succeeded", "failed"]


def test_plain_progress_lines_are_throttled_but_starts_and_ends_are_not():
    out = io.StringIO()
    watch(["r0", "r1"], FakeStore(ADVANCE_FINISH_FAIL), interval=0, stream=out, line_every=3600)
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert not [line for line in lines if ": step " in line]
    assert [line.split(":")[1].split()[0] for line in lines] == [
        "running", "running", "succeeded", "failed",
    ]  # fmt: skip


def test_plain_lines_are_the_default_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    watch(["r0", "r1"], FakeStore(ADVANCE_FINISH_FAIL), interval=0, stream=out)
    assert "\r" not in out.getvalue() and "preset=nvfp4: failed" in out.getvalue()


# ---------------------------------------------------------------------------
# Bars (stderr is a terminal)
# ---------------------------------------------------------------------------


def test_bars_one_per_run_with_status_and_all_closed_at_the_end():
    out = TtyIO()
    before = open_bars()
    frame = watch(["r0", "r1"], FakeStore(ADVANCE_FINISH_FAIL), interval=0, stream=out)

    text = out.getvalue()
    assert "\r" in text  # bars, chosen because the stream is a terminal
    bf16, nvfp4 = (text.rsplit(name, 1)[1].split("\r")[0] for name in ("bf16 :", "nvfp4:"))
    assert "10/10" in bf16 and "succeeded" in bf16  # the last drawing of each bar
    assert "4/10" in nvfp4 and "failed: RuntimeError: boom" in nvfp4
    assert open_bars() == before  # every bar closed
    assert text.endswith("\n")  # the cursor is left below the bars
    assert list(frame.status) == ["succeeded", "failed"]


def test_a_finished_bar_is_not_drawn_again():
    out = TtyIO()
    script = [*ADVANCE_FINISH_FAIL[:4], *[ADVANCE_FINISH_FAIL[3]] * 3, ADVANCE_FINISH_FAIL[4]]
    watch(["r0", "r1"], FakeStore(script), interval=0, stream=out)
    # drawn once when it ended (at the 4th read), once more by close(): not at reads 5-7
    assert out.getvalue().count("succeeded]") == 2


def test_bars_are_closed_when_interrupted():
    before = open_bars()
    with pytest.raises(KeyboardInterrupt):
        watch(["r0", "r1"], FakeStore(ADVANCE_FINISH_FAIL, interrupt_at=2), interval=0,
              stream=TtyIO())  # fmt: skip
    assert open_bars() == before


# ---------------------------------------------------------------------------
# What watch follows
# ---------------------------------------------------------------------------


def test_a_sweep_handle_is_read_by_its_sweep_in_launch_order():
    script = [[row(1, "succeeded", 10), row(0, "succeeded", 10), row(2, "succeeded", 10)]]
    store = FakeStore(script)
    frame = watch(Handle(store, ["r0", "r1"]), interval=0, stream=io.StringIO())
    assert store.calls == ["formats"]
    assert list(frame.run_id) == ["r0", "r1"]  # r2 is not the handle's


def test_a_run_missing_from_the_store_ends_the_watch_instead_of_hanging():
    out = io.StringIO()
    frame = watch(["r0", "gone"], FakeStore([[row(0, "succeeded", 10)]]), interval=0, stream=out)
    assert list(frame.run_id) == ["r0", "gone"]
    assert frame.status.isna().tolist() == [False, True]


def test_watch_reads_a_real_store(tmp_path):
    store = RunStore(tmp_path / "home")
    run_id = store.create_run("preset=bf16", 'name = "x"\n', "s", steps=4)
    with store.writer(run_id, flush_every=None) as writer:
        writer.log_metrics(3, {"loss": 1.0})
        writer.flush()
    out = io.StringIO()
    frame = watch([run_id], store, interval=0, stream=out)
    assert frame.status.tolist() == ["succeeded"] and frame.step.tolist() == [3]
    assert out.getvalue().count("\n") == 1 and "succeeded at step 3/4" in out.getvalue()


# ---------------------------------------------------------------------------
# nblab demo --formats-only
# ---------------------------------------------------------------------------


def test_demo_formats_only_prints_the_tables_and_starts_no_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    assert cli(["demo", "--formats-only", "--size", "256"]) == 0
    out = capsys.readouterr().out
    assert "Element formats" in out and "Presets on N(0,1), 256x256" in out
    for name in ("e2m1", "nvfp4", "mxfp8", "SQNR dB"):
        assert name in out
    assert "Sweep" not in out
    assert RunStore(tmp_path / "home").runs().empty
