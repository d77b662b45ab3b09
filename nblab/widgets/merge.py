"""MergeBuilder: pick a sweep (or runs), a method, then Merge; see the soup beside its
ingredients when it is made.

    builder = MergeBuilder("ft-sweep")       # the sweep's succeeded training runs, all chosen
    builder.method.value = "greedy"
    run_id = builder.merge()                 # checked here, made in a detached process
    builder.wait(); builder.show_result()    # or let the form refresh itself

Merge checks the choice first (nblab.merge.plan_merge: a bad field is shown, nothing is
written), then starts the merge as a run of kind merge in its own process
(nblab.merge.run.start_merge), so the kernel stays free; a background thread watches the
run and shows nblab.merge.report's table of the sweep when it ends.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as w

from nblab.merge import report
from nblab.merge.run import METHODS, MergeError, plan_merge, start_merge
from nblab.runs import TERMINAL_STATUSES, RunStore

ALL_RUNS = "(runs of every sweep)"


class MergeBuilder:
    """The form. `.run_id`: the merge run last started; `.error`: the last refusal."""

    def __init__(self, sweep: str | None = None, *, store: RunStore | None = None):
        self.store = store or RunStore()
        self.run_id: str | None = None
        self.error: str | None = None
        sweeps = sorted({s for s in self.store.runs().sweep if isinstance(s, str)})
        self.sweep = w.Dropdown(
            options=[ALL_RUNS, *sweeps],
            value=sweep if sweep in sweeps else ALL_RUNS,
            description="sweep",
        )
        self.runs = w.SelectMultiple(description="runs", rows=8, layout=w.Layout(width="520px"))
        self.method = w.Dropdown(options=list(METHODS), value="greedy", description="method")
        self.top_k = w.BoundedIntText(value=0, min=0, max=1000, description="top k (0: all)")
        self.merge_button = w.Button(
            description="Merge", button_style="success", icon="object-group"
        )
        self.merge_button.on_click(lambda _: self.merge())
        self.status = w.HTML()
        self.output = w.Output()
        self.sweep.observe(lambda _: self._list_runs(), names="value")
        self.widget = w.VBox(
            [
                w.HBox([self.sweep, self.method, self.top_k]),
                self.runs,
                w.HBox([self.merge_button, self.status]),
                self.output,
            ]
        )
        self._list_runs()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _list_runs(self) -> None:
        """The succeeded training runs of the chosen sweep (all selected), or of every sweep."""
        sweep = None if self.sweep.value == ALL_RUNS else self.sweep.value
        runs = self.store.runs(sweep=sweep)
        runs = runs[(runs.kind == "train") & (runs.status == "succeeded")]
        self.runs.options = [(f"{r.name} ({r.run_id})", r.run_id) for r in runs.itertuples()]
        self.runs.value = tuple(runs.run_id) if sweep is not None else ()

    def target(self) -> str | list[str]:
        """What plan_merge merges: the sweep when all its runs are chosen, else the runs."""
        chosen = list(self.runs.value)
        every = [value for _, value in self.runs.options]
        if self.sweep.value != ALL_RUNS and sorted(chosen) == sorted(every):
            return self.sweep.value
        return chosen

    def merge(self) -> str | None:
        """Check the choice, then start the merge; returns its run id (None if refused)."""
        top_k = self.top_k.value or None
        try:
            spec = plan_merge(self.target(), self.method.value, top_k=top_k, store=self.store)
        except MergeError as err:
            self.error = str(err)
            self.status.value = f"<span style='color:#b3261e'>✗ {html.escape(self.error)}</span>"
            return None
        self.error = None
        self.run_id = start_merge(spec, self.store)
        self.status.value = (
            f"merging {len(spec.members)} runs with {spec.method}: run <code>{self.run_id}</code>"
        )
        threading.Thread(target=self._watch, args=(self.run_id,), daemon=True).start()
        return self.run_id

    def wait(self, timeout: float = 600.0, poll: float = 0.5) -> str:
        """Block until the last merge has ended (or `timeout` s); return its status."""
        deadline = time.monotonic() + timeout
        status = self.store.run(self.run_id)["status"]
        while status not in TERMINAL_STATUSES and time.monotonic() < deadline:
            time.sleep(poll)
            status = self.store.run(self.run_id)["status"]
        return status

    def _watch(self, run_id: str) -> None:
        status = self.wait()
        if run_id == self.run_id:
            self.show_result(status)

    def show_result(self, status: str | None = None) -> str:
        """Show the verdict and the soup table of the merge's sweep (or its error) below
        the form; returns the text shown first."""
        from IPython.display import Markdown, display

        run = self.store.run(self.run_id)
        status = status or run["status"]
        self.status.value = f"run <code>{self.run_id}</code> {html.escape(status)}"
        if status != "succeeded":
            text = run["error"] or status
        elif run["sweep"]:
            text = report.verdict(run["sweep"], self.store)
        else:
            text = f"merge run `{self.run_id}` succeeded (not in a sweep)"
        with self.output:
            self.output.clear_output()
            display(Markdown(text if status == "succeeded" else f"```\n{text}\n```"))
            if status == "succeeded" and run["sweep"]:
                display(report.soup_table(run["sweep"], self.store).set_index("merge").round(4))
        return text

    def __repr__(self) -> str:
        return (
            f"MergeBuilder({self.sweep.value!r}, {self.method.value}, {len(self.runs.value)} runs)"
        )


__all__ = ["MergeBuilder"]
