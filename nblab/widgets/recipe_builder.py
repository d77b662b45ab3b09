"""RecipeBuilder: an ipywidgets form generated from the Recipe dataclasses.

    builder = RecipeBuilder(Recipe.preset("gpt-debug"))
    builder                   # the form: a field per recipe setting, TOML preview, buttons
    builder.recipe            # always the last valid Recipe
    builder.set("train.steps", "abc"); builder.messages   # {"train.steps": "... an integer >= 1"}

Every field is read as the string a `path=value` override would hold and the whole
form is rebuilt with `Recipe().with_overrides(...)` on each change, so the form checks
exactly what TOML and the CLI check; each RecipeError problem shows beside its field.
Run launches one batch job (a separate process, the cell returns at once), Sweep opens
a SweepBuilder on this recipe, Save TOML writes it to the path beside the button.

The model section shows the fields of the chosen kind only (nblab.models.KIND_FIELDS:
gpt's flavour, an hf checkpoint folder or architecture, a py factory), and the live
check reads the sources: a missing folder, a factory that does not import, a config
field transformers rejects are named beside their field as they are typed.
"""

from __future__ import annotations

import html
import json
import typing
from pathlib import Path
from typing import Any

import ipywidgets as w

from nblab.batch.launcher import LocalLauncher
from nblab.models import KIND_FIELDS
from nblab.precision.presets import GEMM_MODES, PRECISION_PRESETS, ROLES
from nblab.recipe import (
    BACKENDS,
    DECAYS,
    DEVICES,
    DTYPES,
    OPTIMIZERS,
    RECIPE_PRESETS,
    SECTIONS,
    TEXT_DOCUMENTS,
    Recipe,
    RecipeError,
    known_names,
)
from nblab.runs import RunStore
from nblab.widgets.runset import RunHandle

# path -> the choices of its dropdown (callables read a registry when the form is built)
CHOICES: dict[str, Any] = {
    "model.name": lambda: known_names("model"),
    "model.flavour": lambda: known_names("flavour"),
    "model.architecture": lambda: ["", *_hf_architectures()],
    "data.name": lambda: known_names("dataset"),
    "data.text_documents": TEXT_DOCUMENTS,
    "optimizer.name": OPTIMIZERS,
    "schedule.decay": DECAYS,
    "train.device": DEVICES,
    "train.dtype": DTYPES,
    "precision.preset": tuple(PRECISION_PRESETS),
    "precision.backend": BACKENDS,
    "precision.gemm": GEMM_MODES,
}
HINTS = {
    "model.config": "a table, e.g. {hidden_size = 256, num_hidden_layers = 4}",
    "model.path": "a local checkpoint folder (config.json, *.safetensors)",
    "model.factory": "my_models:build, or path/to/file.py:build",
    "model.init_from": "a folder of *.safetensors, or RUN_ID[:STEP]",
    "data.tokenizer": "char, byte, bpe:8192, or a local tokenizer.json / folder",
    "precision.keep_high_precision": "comma-separated globs, e.g. lm_head, layers.11.*",
    "optimizer.betas": "two numbers, e.g. 0.9, 0.95",
    "precision.roles": "empty: the preset's; high; a QuantSpec name (nvfp4); or {rounding = 'sr'}",
}
ROLE_PREFIX = "precision.roles."
_LABEL = w.Layout(width="170px")
_FIELD = w.Layout(width="260px")
_ERROR = "color:#b3261e"


def _text(value: Any) -> str:
    """A field value as the override string that reads back to it."""
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):  # a role table, as a TOML inline table
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return str(value)


def _hf_architectures() -> tuple[str, ...]:
    from nblab.models.hf import ARCHITECTURES  # no transformers import: the names only

    return ARCHITECTURES


MODEL_KIND_FIELDS = {f for fields in KIND_FIELDS.values() for f in fields}


def _options(path: str) -> list[str] | None:
    choices = CHOICES.get(path)
    if callable(choices):
        choices = choices()
    return None if choices is None else list(choices)


class RecipeBuilder:
    """The form. `.recipe`: the last valid Recipe; `.problems`: the current problems
    [(path, value, allowed)]; `.messages`: field path -> message shown beside it."""

    def __init__(self, recipe: Recipe | str | None = None, *, store: RunStore | None = None):
        if isinstance(recipe, str):
            recipe = Recipe.preset(recipe)
        self.recipe: Recipe = (recipe or Recipe.preset("gpt-debug")).validate()
        self.store = store
        self.problems: list[tuple[str, Any, str]] = []
        self.messages: dict[str, str] = {}
        self.handle: RunHandle | None = None
        self.sweep_builder = None
        self.fields: dict[str, w.ValueWidget] = {}
        self._notes: dict[str, w.HTML] = {}
        self._rows: dict[str, w.Widget] = {}
        self._loading = False
        self._build()
        self.load(self.recipe)

    # -- the form ---------------------------------------------------------------
    def _field(self, path: str, value: Any, tp: Any) -> w.Widget:
        options = _options(path)
        if options is not None:
            if value not in options:
                options.append(value)
            widget = w.Dropdown(options=options, layout=_FIELD)
        elif tp is bool:
            widget = w.Checkbox(indent=False, layout=_FIELD)
        else:
            widget = w.Text(layout=_FIELD, placeholder=HINTS.get(path, ""), continuous_update=False)
        self.fields[path] = widget
        self._notes[path] = w.HTML()
        widget.observe(self._changed, names="value")
        label = w.Label(path.rpartition(".")[2], layout=_LABEL, tooltip=path)
        self._rows[path] = w.HBox([label, widget, self._notes[path]])
        return self._rows[path]

    def _build(self) -> None:
        self.preset = w.Dropdown(
            options=["(custom)", *RECIPE_PRESETS], value="(custom)", description="preset"
        )
        self.preset.observe(self._load_preset, names="value")
        self.fields["name"] = w.Text(description="name", continuous_update=False)
        self.fields["name"].observe(self._changed, names="value")
        self._notes["name"] = w.HTML()
        sections, titles = [], []
        for section, cls in SECTIONS.items():
            rows = []
            for key, tp in typing.get_type_hints(cls).items():
                path = f"{section}.{key}"
                if path == "precision.roles":
                    rows.append(w.HTML(f"<i>per-role overrides: {html.escape(HINTS[path])}</i>"))
                    rows += [self._field(ROLE_PREFIX + role, "", str) for role in ROLES]
                else:
                    rows.append(self._field(path, getattr(getattr(self.recipe, section), key), tp))
            sections.append(w.VBox(rows))
            titles.append(section)
        self.sections = w.Accordion(children=sections, titles=tuple(titles))
        self.sections.selected_index = 0
        self.summary = w.HTML()
        self.preview = w.HTML()
        self.run_button = w.Button(description="Run", button_style="success", icon="play")
        self.sweep_button = w.Button(description="Sweep", icon="th")
        self.save_button = w.Button(description="Save TOML", icon="save")
        self.save_path = w.Text(placeholder="path.toml", layout=w.Layout(width="240px"))
        self.run_button.on_click(lambda _: self.run())
        self.sweep_button.on_click(lambda _: self.sweep())
        self.save_button.on_click(lambda _: self.save())
        self.status = w.HTML()
        self.output = w.Output()
        head = w.HBox([self.preset, self.fields["name"], self._notes["name"]])
        buttons = w.HBox([self.run_button, self.sweep_button, self.save_button, self.save_path])
        body = w.HBox(
            [
                w.VBox([self.sections], layout=w.Layout(width="62%")),
                w.VBox([w.HTML("<b>TOML</b>"), self.preview], layout=w.Layout(width="38%")),
            ]
        )
        self.widget = w.VBox([head, self.summary, body, buttons, self.status, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- values in and out ---------------------------------------------------------
    def load(self, recipe: Recipe) -> None:
        """Show `recipe` in every field (it becomes `.recipe`)."""
        self._loading = True
        try:
            self.fields["name"].value = recipe.name
            for path, widget in self.fields.items():
                if path == "name":
                    continue
                if path.startswith(ROLE_PREFIX):
                    value = recipe.precision.roles.get(path[len(ROLE_PREFIX) :], "")
                else:
                    value = recipe.get(path)
                if isinstance(widget, w.Dropdown):
                    if value not in widget.options:
                        widget.options = [*widget.options, value]
                    widget.value = value
                elif isinstance(widget, w.Checkbox):
                    widget.value = bool(value)
                else:
                    widget.value = _text(value)
        finally:
            self._loading = False
        self.validate()

    def overrides(self) -> dict[str, Any]:
        """The form as {path: value} for Recipe.with_overrides (strings, bools)."""
        out: dict[str, Any] = {"name": self.fields["name"].value, "precision.roles": {}}
        for path, widget in self.fields.items():
            if path == "name" or (path.startswith(ROLE_PREFIX) and not widget.value.strip()):
                continue
            out[path] = widget.value
        return out

    def set(self, path: str, value: Any) -> None:
        """Set one field as a user would (validation runs as on a change)."""
        if path not in self.fields:
            raise KeyError(f"no field {path!r}; fields: {', '.join(self.fields)}")
        widget = self.fields[path]
        widget.value = value if isinstance(widget, w.Dropdown | w.Checkbox) else _text(value)

    def _changed(self, _change=None) -> None:
        if not self._loading:
            self.preset.value = "(custom)"  # edited: no longer the named preset
            self.validate()

    def _show_model_fields(self) -> None:
        """Only the [model] fields the chosen kind reads (name and init_from always)."""
        kind = self.fields["model.name"].value
        for key in MODEL_KIND_FIELDS:
            shown = key in KIND_FIELDS.get(kind, ())
            self._rows[f"model.{key}"].layout.display = None if shown else "none"

    def visible(self, path: str) -> bool:
        """Whether the field of `path` is shown."""
        return self._rows[path].layout.display != "none"

    def _load_preset(self, change) -> None:
        if change["new"] != "(custom)":
            self.load(Recipe.preset(change["new"]))

    def validate(self) -> bool:
        """Rebuild the recipe from the form; show each problem beside its field. True
        when valid (then `.recipe` is the new recipe)."""
        self._show_model_fields()
        try:
            recipe = Recipe().with_overrides(self.overrides())
            self.problems = []
        except RecipeError as err:
            recipe = None
            self.problems = err.problems
        self.messages = {}
        general = []
        for path, value, allowed in self.problems:
            field = self._field_of(path)
            text = f"{value!r} → {allowed}"
            if field is None:
                general.append(html.escape(f"{path}: {text}"))
            else:
                self.messages[field] = (self.messages.get(field, "") + " " + text).strip()
        for path, note in self._notes.items():
            message = self.messages.get(path)
            note.value = (
                f"<span style='{_ERROR}'>✗ {html.escape(message)}</span>" if message else ""
            )
        if recipe is not None:
            self.recipe = recipe
            self.summary.value = "<span style='color:#1e7d32'>✓ valid</span>"
        else:
            n = len(self.problems)
            lines = "".join(f"<br>{g}" for g in general)
            self.summary.value = (
                f"<span style='{_ERROR}'>✗ {n} problem{'s' if n != 1 else ''}; "
                f"the preview, Run and Sweep keep the last valid recipe{lines}</span>"
            )
        self.preview.value = (
            "<pre style='font-size:11px;max-height:520px;overflow:auto'>"
            f"{html.escape(self.recipe.to_toml())}</pre>"
        )
        return recipe is not None

    def _field_of(self, path: str) -> str | None:
        """The field a problem path belongs to (the longest field path it starts with)."""
        owners = [f for f in self.fields if path == f or path.startswith((f + ".", f + "["))]
        return max(owners, key=len, default=None)

    # -- actions ------------------------------------------------------------------
    def run(self) -> RunHandle:
        """Launch `.recipe` as one batch job (a separate process); return at once."""
        store = self.store or RunStore()
        recipe = self.recipe
        from nblab.eval.source import run_fields

        run_id = store.create_run(recipe.name, recipe.to_toml(), **run_fields(recipe, store))
        launcher = LocalLauncher(jobs=1, store=store)
        launcher.submit([run_id])
        self.handle = RunHandle(run_id, store, launcher)
        self.status.value = f"launched run <code>{run_id}</code> ({html.escape(recipe.name)})"
        from nblab.widgets.monitor import RunMonitor

        self.monitor = RunMonitor(self.handle, store=store)
        with self.output:
            self.output.clear_output()
            from IPython.display import display

            display(self.monitor)
        return self.handle

    def sweep(self):
        """A SweepBuilder over `.recipe`, shown below the form."""
        from nblab.widgets.sweep_builder import SweepBuilder

        self.sweep_builder = SweepBuilder(self.recipe, store=self.store)
        with self.output:
            self.output.clear_output()
            from IPython.display import display

            display(self.sweep_builder)
        return self.sweep_builder

    def save(self, path: str | Path | None = None) -> Path:
        """Write `.recipe` as TOML to `path` (default: the path field, else <name>.toml)."""
        path = Path(path or self.save_path.value or self.recipe.name.replace("/", "_") + ".toml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.recipe.to_toml())
        self.status.value = f"saved <code>{html.escape(str(path))}</code>"
        return path

    def __repr__(self) -> str:
        state = "valid" if not self.problems else f"{len(self.problems)} problems"
        return f"RecipeBuilder({self.recipe.name!r}, {state})"
