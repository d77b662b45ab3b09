"""PrecisionAdvisor: the precision advisor (nblab advise) on a training run, in a notebook.

    advisor = PrecisionAdvisor("20261206-101500-1a2b", builder=RecipeBuilder())
    advisor                                  # preset, budget (Δ loss or bits), buttons
    advisor.advise("nvfp4", budget=0.02)     # the Advice, from the run's module scan
    advisor.measure()                        # a PTQ eval job of the advised recipe
    advisor.apply()                          # the advised recipe fills the RecipeBuilder

Advise reads the newest module scan of the run in that format (nblab sensitivity); when
there is none it starts one as a batch job (the cell returns at once; press Advise again
when it has ended, or pass wait=True). Measure runs the advised recipe's PTQ evaluation
as a batch job too, with the advice recorded in its folder (advice.json), where the
report finds it. Apply loads the advised training recipe (the run's recipe on the preset
with the keep_high_precision patch) into a RecipeBuilder, ready to Run or Sweep.
"""

from __future__ import annotations

import html
import math

import ipywidgets as w

from nblab.batch.launcher import LocalLauncher
from nblab.eval.advisor import Advice, AdviceError, advise, advised_recipe
from nblab.eval.report import ADVICE_FILE, EVAL_FILE, find_scan, read_json
from nblab.eval.run import write_json
from nblab.eval.sensitivity import Scan
from nblab.eval.source import eval_name, eval_recipe, resolve_source, run_fields
from nblab.precision.presets import PRECISION_PRESETS
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.widgets.runset import RunHandle

MODES = ("Δ loss", "bits")


class PrecisionAdvisor:
    def __init__(
        self,
        run: str,
        *,
        builder=None,
        step: int = 0,
        batches: int | None = None,
        store: RunStore | None = None,
    ):
        self.store = store or RunStore()
        self.source = resolve_source(run, step, self.store)  # SourceError names what exists
        self.batches = batches or Recipe.from_toml(self.source.recipe).eval.batches
        self.builder = builder
        self.advice: Advice | None = None
        self.scan: Scan | None = None
        self.handle: RunHandle | None = None
        self._build()

    # -- the form -------------------------------------------------------------------
    def _build(self) -> None:
        presets = [p for p, preset in PRECISION_PRESETS.items() if not preset.is_high_precision]
        self.preset = w.Dropdown(options=presets, value="nvfp4", description="preset")
        self.mode = w.ToggleButtons(options=list(MODES), value=MODES[0], description="budget")
        self.value = w.FloatText(value=0.02, description="at most", layout=w.Layout(width="220px"))
        self.weights_only = w.Checkbox(value=False, description="weights only", indent=False)
        self.advise_button = w.Button(description="Advise", button_style="info", icon="magic")
        self.measure_button = w.Button(description="Measure", icon="flask")
        self.apply_button = w.Button(description="Apply", button_style="success", icon="check")
        self.advise_button.on_click(lambda _: self._guard(self.advise))
        self.measure_button.on_click(lambda _: self._guard(self.measure))
        self.apply_button.on_click(lambda _: self._guard(self._apply_and_show))
        self.status = w.HTML(f"<b>{html.escape(self.source.describe())}</b>")
        self.table = w.HTML()
        self.output = w.Output()
        self.widget = w.VBox(
            [
                self.status,
                w.HBox([self.preset, self.mode, self.value, self.weights_only]),
                w.HBox([self.advise_button, self.measure_button, self.apply_button]),
                self.table,
                self.output,
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _guard(self, action) -> None:
        try:
            action()
        except (AdviceError, ValueError, KeyError) as err:
            self.status.value = f"<span style='color:#b3261e'>✗ {html.escape(str(err))}</span>"

    def _say(self, text: str) -> None:
        self.status.value = text

    # -- actions ----------------------------------------------------------------------
    def advise(
        self,
        preset: str | None = None,
        *,
        budget: float | None = None,
        bits: float | None = None,
        weights_only: bool | None = None,
        wait: bool = False,
    ) -> Advice | None:
        """The advice for `preset` under a Δ loss budget or a bits budget (default: the
        form's). None while the module scan it needs is still running as a job."""
        if preset is not None:
            self.preset.value = preset
        if weights_only is not None:
            self.weights_only.value = weights_only
        if budget is not None or bits is not None:
            self.mode.value = MODES[0] if budget is not None else MODES[1]
            self.value.value = budget if budget is not None else bits
        preset, wo = self.preset.value, self.weights_only.value
        s = self.source
        found = find_scan(self.store, s.run_id, s.step, preset, wo, self.batches)
        if found is None:
            self.handle = self._start(
                eval_recipe(
                    s, precision=preset, weights_only=wo, scan="module", batches=self.batches
                )
            )
            if not wait:
                self._say(
                    f"scanning {preset} in run <code>{self.handle.run_id}</code>; press "
                    f"Advise again when it has ended"
                )
                return None
            self.handle.wait()
            found = find_scan(self.store, s.run_id, s.step, preset, wo, self.batches)
            if found is None:
                raise AdviceError(
                    f"the scan run {self.handle.run_id} ended {self.handle.status()} without a scan"
                )
        scan_run, data = found
        self.scan = Scan.from_dict(data)
        limit = self.value.value
        kwargs = {"budget": limit} if self.mode.value == MODES[0] else {"bits": limit}
        self.advice = advise(self.scan, preset, **kwargs)
        self.advice.scan_run = scan_run
        self._show()
        return self.advice

    def _start(self, recipe: Recipe) -> RunHandle:
        run_id = self.store.create_run(
            recipe.name, recipe.to_toml(), **run_fields(recipe, self.store)
        )
        launcher = LocalLauncher(jobs=1, store=self.store)
        launcher.submit([run_id])
        return RunHandle(run_id, self.store, launcher)

    def measure(self, wait: bool = False) -> str:
        """Start the PTQ evaluation of the advised recipe as a batch job (on the scan's
        batches); return its run id. With wait=True, block and fill advice.measured_delta."""
        a = self._need_advice()
        wo = ["weights-only"] if a.weights_only else []
        recipe = eval_recipe(
            self.source,
            weights_only=a.weights_only,
            batches=self.scan.batches,
            name=eval_name(self.source, f"advised-{a.preset}", *wo),
            overrides={
                "precision.preset": a.preset,
                "precision.roles": {},
                "precision.keep_high_precision": list(a.patch),
            },
        )
        self.handle = self._start(recipe)
        a.measured_run = self.handle.run_id
        write_json(self.store.run_dir(a.measured_run) / ADVICE_FILE, a.to_dict())
        self._say(f"measuring in run <code>{a.measured_run}</code>")
        if wait:
            self.handle.wait()
            record = read_json(self.store, a.measured_run, EVAL_FILE) or {}
            loss = record.get("metrics", {}).get("val_loss", math.nan)
            a.measured_delta = loss - a.base_loss
            write_json(self.store.run_dir(a.measured_run) / ADVICE_FILE, a.to_dict())
            self._show()
        return a.measured_run

    def apply(self):
        """The advised training recipe into the RecipeBuilder (made when none was given)."""
        a = self._need_advice()
        recipe = advised_recipe(self.source, a)
        if self.builder is None:
            from nblab.widgets.recipe_builder import RecipeBuilder

            self.builder = RecipeBuilder(recipe, store=self.store)
        else:
            self.builder.load(recipe)
        self._say(f"applied: <code>{html.escape(recipe.name)}</code> in the RecipeBuilder")
        return self.builder

    def _apply_and_show(self) -> None:
        builder = self.apply()
        with self.output:
            self.output.clear_output()
            from IPython.display import display

            display(builder)

    def _need_advice(self) -> Advice:
        if self.advice is None:
            raise AdviceError("no advice yet: press Advise (or call .advise(...)) first")
        return self.advice

    def _show(self) -> None:
        a = self.advice
        measured = "" if a.measured_delta is None else f"{a.measured_delta:.4f}"
        rows = "".join(f"<li><code>{html.escape(m)}</code></li>" for m in a.keep) or "<li>none</li>"
        patch = html.escape(", ".join(f'"{p}"' for p in a.patch))
        self.table.value = (
            f"<p>keep in high precision ({len(a.keep)}):</p><ul>{rows}</ul>"
            f"<p><code>precision.keep_high_precision = [{patch}]</code></p>"
            f"<table><tr><th>bits per element</th><th>predicted Δ loss</th>"
            f"<th>measured Δ loss</th></tr><tr><td>{a.bits_per_element:.3f}</td>"
            f"<td>{a.predicted_delta:.4f}</td><td>{measured}</td></tr></table>"
        )
        self._say(f"advice from scan <code>{a.scan_run}</code>")

    def __repr__(self) -> str:
        state = "no advice" if self.advice is None else f"{len(self.advice.keep)} kept"
        return f"PrecisionAdvisor({self.source.run_id!r}, {state})"
