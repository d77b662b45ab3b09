"""SweepBuilder: pick axes over a recipe, preview the points, launch them as jobs.

    builder = SweepBuilder(recipe)
    builder.presets.value = ("bf16", "nvfp4")           # the precision.preset axis
    builder.axes.value = "optimizer.lr=1e-3,3e-3"       # more axes, one "path=v1,v2" a line
    builder.preview()                                   # 4 points (or the SweepError text)
    handle = builder.launch()                           # returns at once; jobs run apart

Launch calls nblab.batch.run_sweep(wait=False): every point is validated before any
run is created, the jobs are separate processes, and a RunMonitor of the handle is
shown below the form.
"""

from __future__ import annotations

import html
import re
from typing import Any

import ipywidgets as w

from nblab.batch.launcher import LAUNCHERS, get_launcher
from nblab.batch.sweeps import SweepHandle, run_sweep
from nblab.precision.presets import PRECISION_PRESETS
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.sweep import Sweep, SweepError, SweepPoint

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SweepBuilder:
    """The form. `.points`: the expanded points of the last preview ([] on error);
    `.error`: the SweepError text of the last preview, else None; `.handle`: the
    SweepHandle of the last launch."""

    def __init__(
        self,
        recipe: Recipe | str,
        *,
        name: str | None = None,
        presets: tuple[str, ...] = (),
        axes: str = "",
        jobs: int = 1,
        launcher: str = "local",
        store: RunStore | None = None,
    ):
        self.recipe = Recipe.preset(recipe) if isinstance(recipe, str) else recipe.validate()
        self.store = store
        self.points: list[SweepPoint] = []
        self.error: str | None = None
        self.handle: SweepHandle | None = None
        self.monitor = None
        default = _UNSAFE.sub("-", self.recipe.name).strip("-") + "-sweep"
        self.name = w.Text(value=name or default, description="sweep")
        self.presets = w.SelectMultiple(
            options=list(PRECISION_PRESETS),
            value=tuple(presets),
            description="precision",
            rows=min(8, len(PRECISION_PRESETS)),
        )
        self.axes = w.Textarea(
            value=axes,
            placeholder="one axis a line: section.field=v1,v2\ne.g. optimizer.lr=1e-3,3e-3",
            description="axes",
            layout=w.Layout(width="420px", height="90px"),
        )
        self.jobs = w.BoundedIntText(value=jobs, min=1, max=256, description="jobs")
        # where the jobs run: this machine, or a Slurm cluster (one job per point)
        self.launcher = w.Dropdown(options=list(LAUNCHERS), value=launcher, description="on")
        self.count = w.HTML()
        self.preview_box = w.HTML()
        self.launch_button = w.Button(description="Launch", button_style="success", icon="rocket")
        self.launch_button.on_click(lambda _: self.launch())
        self.status = w.HTML()
        self.output = w.Output()
        for widget in (self.name, self.presets, self.axes):
            widget.observe(lambda _: self.preview(), names="value")
        self.widget = w.VBox(
            [
                w.HBox([self.name, self.jobs, self.launcher]),
                w.HBox([self.presets, self.axes]),
                self.count,
                self.preview_box,
                w.HBox([self.launch_button, self.status]),
                self.output,
            ]
        )
        self.preview()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def grid(self) -> list[str]:
        """The axes as Sweep.from_overrides items: the preset choice first, then each
        non-empty line of the axes box."""
        items = [f"precision.preset={','.join(self.presets.value)}"] if self.presets.value else []
        items += [line.strip() for line in self.axes.value.splitlines() if line.strip()]
        return items

    @property
    def sweep(self) -> Sweep:
        """The Sweep the form describes (raises SweepError naming what is wrong)."""
        return Sweep.from_overrides(self.recipe, self.grid(), name=self.name.value.strip())

    def preview(self) -> int:
        """Expand the sweep; show its points and count, or the error. Returns the count
        (0 when the sweep is invalid)."""
        try:
            sweep = self.sweep
            self.points = sweep.expand()
            self.error = None
        except SweepError as err:
            self.points, self.error = [], str(err)
        if self.error is not None:
            self.count.value = "<span style='color:#b3261e'>✗ not launchable</span>"
            self.preview_box.value = f"<pre style='color:#b3261e'>{html.escape(self.error)}</pre>"
            self.launch_button.disabled = True
            return 0
        n = len(self.points)
        self.count.value = f"<b>{n} point{'s' if n != 1 else ''}</b>"
        rows = "".join(f"<li><code>{html.escape(p.name)}</code></li>" for p in self.points[:50])
        more = f"<li>... {n - 50} more</li>" if n > 50 else ""
        self.preview_box.value = f"<pre>{html.escape(sweep.describe())}</pre><ul>{rows}{more}</ul>"
        self.launch_button.disabled = False
        return n

    def launch(self, *, monitor: bool = True, **monitor_options: Any) -> SweepHandle:
        """run_sweep(sweep, jobs=N, wait=False) on the chosen launcher (local, or
        slurm: SlurmLauncher with its defaults): returns the handle at once (also kept
        as `.handle`), then shows a RunMonitor of it (`.monitor`)."""
        if not self.preview():
            raise SweepError(self.name.value, [("(sweep)", self.grid(), self.error or "")])
        store = self.store or RunStore()
        launcher = None
        if self.launcher.value != "local":  # Slurm schedules its own concurrency
            launcher = get_launcher(self.launcher.value, store=store)
        self.handle = run_sweep(
            self.sweep, launcher=launcher, jobs=self.jobs.value, wait=False, store=store
        )
        n = len(self.handle.run_ids)
        sweep = html.escape(self.handle.sweep)
        self.status.value = f"launched {n} run{'s' if n != 1 else ''} of sweep <code>{sweep}</code>"
        if monitor:
            from nblab.widgets.monitor import RunMonitor

            self.monitor = RunMonitor(self.handle, store=self.handle.store, **monitor_options)
            with self.output:
                self.output.clear_output()
                from IPython.display import display

                display(self.monitor)
        return self.handle

    def __repr__(self) -> str:
        state = f"{len(self.points)} points" if self.error is None else "invalid"
        return f"SweepBuilder({self.name.value!r}, {state})"
