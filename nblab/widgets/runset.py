"""One helper every view uses to accept a run id, run ids, a handle or a sweep name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nblab.runs import RunStore


@dataclass
class RunSet:
    """Runs of one store: fixed run ids, or every run of a sweep (re-read on each call
    to `run_ids()`, so runs a sweep adds later show up)."""

    store: RunStore
    fixed: list[str] = field(default_factory=list)
    sweep: str | None = None
    label: str | None = None  # what describe() says (e.g. the sweep of a handle)

    def run_ids(self) -> list[str]:
        if self.sweep is not None:
            return list(self.store.runs(sweep=self.sweep).run_id)
        return list(self.fixed)

    def runs(self) -> pd.DataFrame:
        """The store's rows of these runs (status, name, step...), in run_ids() order."""
        if self.sweep is not None:
            return self.store.runs(sweep=self.sweep).reset_index(drop=True)
        frame = self.store.runs()
        frame = frame[frame.run_id.isin(self.fixed)]
        order = {run_id: i for i, run_id in enumerate(self.fixed)}
        return frame.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)

    def describe(self) -> str:
        if self.label:
            return self.label
        return f"sweep {self.sweep}" if self.sweep else ", ".join(self.fixed)


def resolve_runs(target: Any, store: RunStore | None = None) -> RunSet:
    """A RunSet for `target`: a RunSet, a SweepHandle (or anything with `.run_ids`, or
    `.run_id` for one run; its `.store` is used), a run id, a sweep name, or a list of
    run ids. Raises KeyError naming `target` when it is neither a run nor a sweep."""
    if isinstance(target, RunSet):
        return target
    store = store or getattr(target, "store", None) or RunStore()
    if hasattr(target, "run_ids") and not isinstance(target, str):
        ids = target.run_ids() if callable(target.run_ids) else target.run_ids
        sweep = getattr(target, "sweep", None)
        return RunSet(store, list(ids), label=f"sweep {sweep}" if isinstance(sweep, str) else None)
    if hasattr(target, "run_id") and isinstance(target.run_id, str):
        return RunSet(store, [target.run_id])
    if isinstance(target, str):
        if not store.runs(sweep=target).empty:
            return RunSet(store, sweep=target)
        try:
            store.run(target)
        except (KeyError, ValueError):
            raise KeyError(
                f"{target!r} is neither a run id nor a sweep with runs in {store.home}"
            ) from None
        return RunSet(store, [target])
    if isinstance(target, Iterable):
        ids = list(target)
        bad = [i for i in ids if not isinstance(i, str)]
        if bad:
            raise KeyError(f"run ids must be strings, got {bad!r}")
        store._known(ids) if ids else None  # KeyError naming the unknown ones
        return RunSet(store, ids)
    raise KeyError(f"{target!r}: expected a run id, a sweep name, a list of run ids or a handle")


@dataclass
class RunHandle:
    """One launched run (what RecipeBuilder.run returns): `.run_ids` makes it a view
    target like a SweepHandle."""

    run_id: str
    store: RunStore
    launcher: Any = None

    @property
    def run_ids(self) -> list[str]:
        return [self.run_id]

    def status(self) -> str:
        return self.store.run(self.run_id)["status"]

    def wait(self, timeout: float | None = None) -> str:
        if self.launcher is not None:
            self.launcher.wait(timeout)
        return self.status()

    def cancel(self) -> None:
        if self.launcher is not None:
            self.launcher.cancel(self.run_id)
        else:
            from nblab.batch import cancel_run

            cancel_run(self.store, self.run_id, wait=0)


def holoviews():
    """holoviews with its bokeh plotting backend loaded (needed before `.opts`)."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401

    return hv
