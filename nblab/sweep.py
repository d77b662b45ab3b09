"""Sweeps: a base recipe plus axes over dotted recipe fields, expanded into named points.

    sweep = Sweep(Recipe.preset("gpt-tiny"), name="fp4-study",
                  grid={"precision.preset": ["bf16", "nvfp4"], "optimizer.lr": [1e-3, 3e-3]},
                  exclude=["precision.preset == 'bf16' and optimizer.lr > 2e-3"])
    points = sweep.expand()       # every point validated first, else one SweepError
    points[0].name                # "preset=bf16,lr=1e-3"
    points[0].recipe.name         # "fp4-study/preset=bf16,lr=1e-3"

Axes multiply in this order: each grid axis (the first outermost), then the zip lists
(stepped together, one factor), then the random samples (the same `samples` draws,
made once with `seed`, for every grid x zip point). A point's name is its axis values
in that order, `key=value` joined by commas; the key is the last component of the
dotted path, longer where two axes would share it.

Values are typed exactly as `Recipe.with_overrides` types them ("1e-3" -> 0.001), so a
sweep from the CLI (`Sweep.from_overrides`) and one from TOML (`Sweep.from_toml`) name
and build the same points. Exclude expressions are parsed with `ast` and evaluated by
a small interpreter (comparisons, and/or/not, literals, `in`, axis names); nothing is
ever passed to `eval`.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import tomli_w

from nblab.exclude import ExcludeExpression
from nblab.precision.presets import format_problems
from nblab.recipe import RECIPE_PRESETS, SECTIONS, Recipe, RecipeError, apply_override

Problem = tuple[str, Any, str]  # (where, bad value, what would be accepted)

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
TOML_KEYS = ("name", "base", "set", "grid", "zip", "random", "exclude")
RANGE_KEYS = ("low", "high", "log", "int")
RANDOM_SETTINGS = ("samples", "seed")
SAMPLE_DIGITS = 4  # random floats are rounded to 4 significant digits (names stay short)


class SweepError(ValueError):
    """Everything wrong with a sweep at once. `.problems`: (where, bad value, what would
    be accepted) for the sweep itself; `.bad_points`: point name -> the RecipeError
    problems of that point."""

    def __init__(
        self,
        sweep: Any,
        problems: list[Problem] = (),
        bad_points: Mapping[str, list[Problem]] | None = None,
        total: int | None = None,
    ):
        self.sweep = sweep
        self.problems = list(problems)
        self.bad_points = dict(bad_points or {})
        lines = []
        if self.problems:
            n = len(self.problems)
            lines.append(f"invalid sweep {sweep!r} ({n} problem{'s' if n != 1 else ''}):")
            lines.append(format_problems(self.problems))
        if self.bad_points:
            n = len(self.bad_points)
            of = f" of {total}" if total is not None else ""
            lines.append(
                f"sweep {sweep!r}: {n}{of} point{'s' if n != 1 else ''} invalid, "
                "so no point was expanded:"
            )
            for name, point_problems in self.bad_points.items():
                lines.append(f"  {name}:")
                lines.append(format_problems([(f"  {p}", v, a) for p, v, a in point_problems]))
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class SweepPoint:
    """One expanded point: its name, its axis values ({dotted path: value}, typed as the
    recipe types them) and its validated recipe, named f"{sweep}/{name}"."""

    name: str
    overrides: dict[str, Any]
    recipe: Recipe


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    log: bool = False
    int: bool = False

    def draw(self, rng: Random) -> float | int:
        if self.int:
            lo, hi = math.ceil(self.low), math.floor(self.high)
            if not self.log:
                return rng.randint(lo, hi)
            x = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            return min(max(x, lo), hi)
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        x = float(f"{x:.{SAMPLE_DIGITS}g}")
        return min(max(x, self.low), self.high)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.int:
            out["int"] = True
        return out

    def describe(self) -> str:
        kind = ("log-" if self.log else "") + ("uniform int" if self.int else "uniform")
        return f"{kind} in [{_fmt(self.low)}, {_fmt(self.high)}]"


# One choice of one factor: ((path, raw value, typed value), ...)
_Choice = tuple[tuple[str, Any, Any], ...]


class Sweep:
    """A base recipe plus axes. Treat it as immutable: the random samples are drawn once,
    at construction. Raises SweepError naming every structural problem (bad name, unknown
    field, zip lengths, bad range, unsafe exclude expression) at once."""

    def __init__(
        self,
        base: Recipe | str,
        *,
        name: str | None = None,
        grid: Mapping[str, list] | None = None,
        zip: Mapping[str, list] | None = None,  # named as in TOML (shadows the builtin here)
        random: Mapping[str, Any] | None = None,
        samples: int = 0,
        seed: int = 0,
        exclude: list[str | Callable[[dict], bool]] | None = None,
    ):
        problems: list[Problem] = []
        if isinstance(base, str):
            try:
                base = Recipe.preset(base)
            except RecipeError as err:
                raise SweepError(name or base, [("base", base, err.problems[0][2])]) from None
        if not isinstance(base, Recipe):
            raise SweepError(name, [("base", base, "a Recipe or a recipe preset name")])
        self.base: Recipe = base
        self.name: str = base.name if name is None else name
        if not isinstance(self.name, str) or not _safe_name(self.name):
            problems.append(
                (
                    "name",
                    self.name,
                    "letters, digits, '-', '_' and '.' only (it names folders and URLs); "
                    "pass name=",
                )
            )
        self.grid: dict[str, list] = self._axis_table("grid", grid, problems)
        self.zip: dict[str, list] = self._axis_table("zip", zip, problems)
        lengths = {path: len(values) for path, values in self.zip.items()}
        if len(set(lengths.values())) > 1:
            problems.append(("zip", lengths, "lists of one length (they step together)"))
        self.random: dict[str, list | _Range] = self._random_table(random, problems)
        self.samples: int = samples
        self.seed: int = seed
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            problems.append(("random.samples", samples, "an integer >= 0"))
        elif self.random and samples < 1:
            problems.append(("random.samples", samples, "an integer >= 1 with random axes"))
        elif samples and not self.random:
            problems.append(("random.samples", samples, "0 when there are no random axes"))
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append(("random.seed", seed, "an integer"))
        kinds: dict[str, list[str]] = {}
        for kind, table in (("grid", self.grid), ("zip", self.zip), ("random", self.random)):
            for path in table:
                kinds.setdefault(path, []).append(kind)
        for path, where in kinds.items():
            if len(where) > 1:
                problems.append((path, " and ".join(where), "one axis per field"))
        self.axes: list[str] = list(kinds)
        self.exclude: list[str | Callable[[dict], bool]] = list(exclude or [])
        self._predicates: list[Callable[[dict], bool]] = []
        for i, rule in enumerate(self.exclude):
            if isinstance(rule, str):
                try:
                    self._predicates.append(ExcludeExpression(rule, self.axes))
                except ValueError as err:
                    problems.append((f"exclude[{i}]", rule, str(err)))
            elif callable(rule):
                self._predicates.append(rule)
            else:
                problems.append((f"exclude[{i}]", rule, "an expression string or a callable"))
        if problems:
            raise SweepError(self.name, problems)
        self._factors = self._make_factors(problems)
        if problems:
            raise SweepError(self.name, problems)
        self._keys = short_keys(self.axes)

    # -- construction from files and the command line ----------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, root: str | Path | None = None) -> Sweep:
        """From the plain data of a sweep TOML. `root`: the folder a `base` file path is
        relative to (default: the current folder)."""
        if not isinstance(data, Mapping):
            raise SweepError(None, [("(sweep)", data, "a table of sweep settings")])
        problems: list[Problem] = []
        name = data.get("name")
        for key, value in data.items():
            if key in RANDOM_SETTINGS:
                problems.append((key, value, f"{key} inside the [random] table"))
            elif key not in TOML_KEYS:
                problems.append((key, value, _unknown(key, "the sweep", TOML_KEYS)))
        base = _load_base(data.get("base"), root, problems)
        overrides = data.get("set", {})
        if not isinstance(overrides, Mapping):
            problems.append(("set", overrides, 'a table of "section.field" = value'))
        elif base is not None and overrides:
            try:
                base = base.with_overrides(dict(overrides))
            except RecipeError as err:
                problems += [(f"set.{p}", v, a) for p, v, a in err.problems]
        random = data.get("random", {})
        if not isinstance(random, Mapping):
            problems.append(("random", random, "a table of random axes, samples and seed"))
            random = {}
        random = dict(random)
        samples = random.pop("samples", 0)
        seed = random.pop("seed", 0)
        exclude = data.get("exclude", [])
        if not isinstance(exclude, list):
            problems.append(("exclude", exclude, "a list of expression strings"))
            exclude = []
        # `exclude` is a sweep setting, also accepted inside [random] where it is easy to
        # write by accident (a key after [random] belongs to that table)
        extra = random.pop("exclude", [])
        exclude = exclude + (extra if isinstance(extra, list) else [extra])
        if problems or base is None:
            raise SweepError(name, problems)
        return cls(
            base,
            name=name,
            grid=data.get("grid"),
            zip=data.get("zip"),
            random=random,
            samples=samples,
            seed=seed,
            exclude=exclude,
        )

    @classmethod
    def from_toml(cls, source: str | Path) -> Sweep:
        """From TOML text, or from a file (a Path, or a str ending in .toml); a `base`
        recipe path is relative to the sweep file."""
        root = None
        if isinstance(source, Path) or (
            isinstance(source, str) and source.endswith(".toml") and "\n" not in source
        ):
            root = Path(source).parent
            try:
                source = Path(source).read_text()
            except OSError as err:
                raise SweepError(
                    None, [("(file)", str(source), f"a readable file: {err}")]
                ) from None
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as err:
            raise SweepError(None, [("(toml)", source[:60], f"valid TOML: {err}")]) from None
        return cls.from_dict(data, root=root)

    @classmethod
    def from_overrides(
        cls,
        base: Recipe | str,
        grid: list[str],
        *,
        name: str | None = None,
        exclude: list[str | Callable[[dict], bool]] | None = None,
    ) -> Sweep:
        """A grid sweep from CLI strings: "precision.preset=bf16,nvfp4". Values are split
        on commas and typed by the recipe; a value list that starts with "[" is read as
        a TOML array instead, for values that hold commas themselves:
        'precision.keep_high_precision=[[], ["lm_head", "layers.3.*"]]'."""
        problems: list[Problem] = []
        table: dict[str, list] = {}
        for item in grid:
            if not isinstance(item, str) or "=" not in item:
                problems.append(("(grid)", item, 'a "section.field=v1,v2" string'))
                continue
            path, _, text = item.partition("=")
            path, text = path.strip(), text.strip()
            if text.startswith("["):
                try:
                    values = tomllib.loads(f"v = {text}")["v"]
                except tomllib.TOMLDecodeError as err:
                    problems.append((path, text, f"a TOML array of values: {err}"))
                    continue
            else:
                values = [v.strip() for v in text.split(",")]
            if path in table:
                problems.append((path, item, "each field once (list all values in one item)"))
            table[path] = values
        if problems:
            raise SweepError(name, problems)
        return cls(base, name=name, grid=table, exclude=exclude)

    # -- output -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain TOML-able data. The base is written as its preset name plus [set] for
        the fields that differ, or whole as a [base] table when it is no preset."""
        out: dict[str, Any] = {"name": self.name}
        preset = RECIPE_PRESETS.get(self.base.name)
        diff: dict[str, Any] = {}
        if preset is not None:
            out["base"] = self.base.name
            named, mine = Recipe.preset(self.base.name).to_dict(), self.base.to_dict()
            for section in SECTIONS:
                for key, value in mine[section].items():
                    if named[section][key] != value:
                        diff[f"{section}.{key}"] = value
        else:
            out["base"] = self.base.to_dict()
        if self.exclude:
            for i, rule in enumerate(self.exclude):
                if not isinstance(rule, str):
                    raise SweepError(
                        self.name,
                        [(f"exclude[{i}]", rule, "an expression string to be written out")],
                    )
            out["exclude"] = list(self.exclude)
        if diff:
            out["set"] = diff
        for kind in ("grid", "zip"):
            table = getattr(self, kind)
            if table:
                out[kind] = {path: [_plain(v) for v in self._typed[path]] for path in table}
        if self.random:
            out["random"] = {"samples": self.samples, "seed": self.seed}
            for path, spec in self.random.items():
                values = self._typed[path] if isinstance(spec, list) else spec.to_dict()
                out["random"][path] = _plain(values)
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    # -- expansion ----------------------------------------------------------------
    def expand(self) -> list[SweepPoint]:
        """Every point, validated: one SweepError lists each bad point with each of its
        problems, so nothing is launched when any point is bad."""
        points, bad = [], {}
        for name, raw, typed in self._points():
            try:
                recipe = self.base.with_overrides({**raw, "name": f"{self.name}/{name}"})
            except RecipeError as err:
                bad[name] = err.problems
                continue
            points.append(SweepPoint(name, typed, recipe))
        if bad:
            raise SweepError(self.name, bad_points=bad, total=len(points) + len(bad))
        return points

    def __len__(self) -> int:
        return len(self._points())

    def describe(self) -> str:
        """A few lines: each axis with its values, the exclusions and the count."""
        width = max((len(p) for p in self.axes), default=0)
        lines = [f"sweep {self.name} (base {self.base.name})"]
        for kind in ("grid", "zip"):
            for path in getattr(self, kind):
                values = ", ".join(_fmt(v) for v in self._typed[path])
                lines.append(f"  {kind:<7} {path:<{width}}  {values}")
        for path, spec in self.random.items():
            if isinstance(spec, list):
                what = "choice of " + ", ".join(_fmt(v) for v in self._typed[path])
            else:
                what = spec.describe()
            lines.append(f"  {'random':<7} {path:<{width}}  {what}")
        if self.random:
            lines.append(f"  {'random':<7} {self.samples} samples, seed {self.seed}")
        for rule in self.exclude:
            lines.append(f"  exclude {rule if isinstance(rule, str) else _callable_name(rule)}")
        sizes = [len(f) for f in self._factors]
        total = math.prod(sizes)
        count = len(self)
        parts = [" x ".join(map(str, sizes)) + f" = {total}"] if len(sizes) > 1 else []
        parts += [f"{total - count} excluded"] if total != count else []
        text = f" ({', '.join(parts)})" if parts else ""
        lines.append(f"  {count} point{'s' if count != 1 else ''}{text}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Sweep({self.name!r}, base={self.base.name!r}, axes={self.axes})"

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _axis_table(kind: str, table: Any, problems: list[Problem]) -> dict[str, list]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            problems.append((kind, table, 'a table of "section.field" = [values]'))
            return {}
        out = {}
        for path, values in table.items():
            problem = _path_problem(path)
            if problem:
                problems.append((f"{kind}.{path}", values, problem))
            elif not isinstance(values, list | tuple) or not values:
                problems.append((f"{kind}.{path}", values, "a non-empty list of values"))
            else:
                out[path] = list(values)
        return out

    @staticmethod
    def _random_table(table: Any, problems: list[Problem]) -> dict[str, list | _Range]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            problems.append(("random", table, 'a table of "section.field" = list or range'))
            return {}
        out: dict[str, list | _Range] = {}
        for path, spec in table.items():
            where = f"random.{path}"
            problem = _path_problem(path)
            if problem:
                problems.append((where, spec, problem))
            elif isinstance(spec, list | tuple) and spec:
                out[path] = list(spec)
            elif isinstance(spec, Mapping):
                found = len(problems)
                for key in spec:
                    if key not in RANGE_KEYS:
                        problems.append(
                            (f"{where}.{key}", spec[key], _unknown(key, where, RANGE_KEYS))
                        )
                low, high = spec.get("low"), spec.get("high")
                log, is_int = spec.get("log", False), spec.get("int", False)
                for key, value in (("low", low), ("high", high)):
                    if not _is_number(value) or not math.isfinite(value):
                        problems.append((f"{where}.{key}", value, "a finite number"))
                for key, value in (("log", log), ("int", is_int)):
                    if not isinstance(value, bool):
                        problems.append((f"{where}.{key}", value, "true or false"))
                if len(problems) == found:
                    if low > high:
                        problems.append((where, spec, f"low <= high (low={low}, high={high})"))
                    elif log and low <= 0:
                        problems.append((f"{where}.low", low, "a number > 0 with log = true"))
                    elif is_int and math.ceil(low) > math.floor(high):
                        problems.append((where, spec, "an integer between low and high"))
                    else:
                        out[path] = _Range(low, high, log, is_int)
            else:
                problems.append(
                    (where, spec, "a non-empty list to choose from or {low, high, log, int}")
                )
        return out

    def _make_factors(self, problems: list[Problem]) -> list[list[_Choice]]:
        """The factors of the product: one per grid axis, one for the zip lists, one for
        the random samples. Also fills self._typed (path -> typed values of a list)."""
        base_data = self.base.to_dict()
        self._typed: dict[str, list] = {}
        for table in (self.grid, self.zip, self.random):
            for path, values in table.items():
                if isinstance(values, list):
                    self._typed[path] = [_typed_value(base_data, path, v) for v in values]
        factors: list[list[_Choice]] = []
        for path, values in self.grid.items():
            factors.append(
                [((path, v, t),) for v, t in zip(values, self._typed[path], strict=True)]
            )
        if self.zip:
            n = len(next(iter(self.zip.values())))
            factors.append(
                [
                    tuple((p, vs[i], self._typed[p][i]) for p, vs in self.zip.items())
                    for i in range(n)
                ]
            )
        if self.random:
            factors.append(self._draw_samples(problems))
        return factors

    def _draw_samples(self, problems: list[Problem]) -> list[_Choice]:
        """`samples` distinct draws (a repeat is drawn again, so names stay unique)."""
        rng = Random(self.seed)
        samples: list[_Choice] = []
        seen: set[tuple[str, ...]] = set()
        attempts = 0
        while len(samples) < self.samples and attempts < 100 * self.samples + 100:
            attempts += 1
            choice = []
            for path, spec in self.random.items():
                if isinstance(spec, _Range):
                    value = spec.draw(rng)
                    choice.append((path, value, value))
                else:
                    i = rng.randrange(len(spec))
                    choice.append((path, spec[i], self._typed[path][i]))
            key = tuple(_fmt(t) for _, _, t in choice)
            if key not in seen:
                seen.add(key)
                samples.append(tuple(choice))
        if len(samples) < self.samples:
            problems.append(
                (
                    "random.samples",
                    self.samples,
                    f"at most {len(samples)} distinct samples of these random axes "
                    f"(found in {attempts} draws); lower samples or widen the axes",
                )
            )
        return samples

    def _points(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(name, raw overrides, typed overrides) of every point that is not excluded;
        SweepError when two points share a name or an exclude rule fails."""
        out = []
        problems: list[Problem] = []
        names: dict[str, int] = {}
        for combo in itertools.product(*self._factors):
            cells = [cell for choice in combo for cell in choice]
            raw = {path: value for path, value, _ in cells}
            typed = {path: value for path, _, value in cells}
            name = ",".join(f"{self._keys[p]}={_fmt(v)}" for p, v in typed.items()) or "base"
            if self._excluded(name, typed, problems):
                continue
            names[name] = names.get(name, 0) + 1
            out.append((name, raw, typed))
        for name, count in names.items():
            if count > 1:
                problems.append(
                    (
                        "point names",
                        name,
                        f"unique names: {count} points share it (repeated values?)",
                    )
                )
        if problems:
            raise SweepError(self.name, problems)
        if not out:
            raise SweepError(self.name, [("exclude", self.exclude, "rules that keep some point")])
        return out

    def _excluded(self, name: str, values: dict[str, Any], problems: list[Problem]) -> bool:
        for i, predicate in enumerate(self._predicates):
            try:
                if predicate(dict(values)):
                    return True
            except Exception as err:  # a rule that cannot judge a point is the user's to fix
                problems.append(
                    (f"exclude[{i}]", self.exclude[i], f"a rule that works on {name}: {err!r}")
                )
        return False


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _safe_name(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name)) and name not in (".", "..")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unknown(key: Any, table: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    why = f"unknown key in {table}; "
    return why + (f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(known)}")


def _field_paths() -> list[str]:
    return [f"{s}.{k}" for s, cls in SECTIONS.items() for k in typing.get_type_hints(cls)]


def _path_problem(path: Any) -> str | None:
    """Why `path` is not a dotted recipe field an axis can sweep, or None."""
    if not isinstance(path, str):
        return "a dotted recipe field such as 'optimizer.lr'"
    if path == "name":
        return "a recipe field other than name (the sweep names each point)"
    head, _, rest = path.partition(".")
    key, _, deeper = rest.partition(".")
    hints = typing.get_type_hints(SECTIONS[head]) if head in SECTIONS else {}
    if key not in hints:
        close = difflib.get_close_matches(path, _field_paths(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"a dotted recipe field such as 'optimizer.lr'{hint}"
    if deeper and typing.get_origin(hints[key]) is not dict:
        return f"{head}.{key} is a single value, not a table"
    return None


def _typed_value(base_data: dict[str, Any], path: str, raw: Any) -> Any:
    """`raw` typed as Recipe.with_overrides types it at `path` ("1e-3" -> 0.001,
    "lm_head,layers.3.*" -> a list); `raw` itself when it does not parse (the point's
    validation then says why)."""
    if path == "data.name":
        return raw  # "text:/some/file" also sets data.path: keep the whole shorthand
    data = copy.deepcopy(base_data)
    problems: list[Problem] = []
    apply_override(data, path, raw, problems)
    if problems:
        return raw
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return raw
        node = node[part]
    return node


def short_keys(paths: list[str]) -> dict[str, str]:
    """path -> its last component, or as many more as it takes to tell axes apart."""
    depth = dict.fromkeys(paths, 1)
    while True:
        short = {p: ".".join(p.split(".")[-depth[p] :]) for p in paths}
        counts = list(short.values())
        clash = [p for p in paths if counts.count(short[p]) > 1 and depth[p] < p.count(".") + 1]
        if not clash:
            return short
        for p in clash:
            depth[p] += 1


def _fmt(value: Any) -> str:
    """A value as it appears in a point name: 3e-4, 0.1, 200, bf16, lm_head+layers.3.*."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, list | tuple):
        return "+".join(_fmt(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return "+".join(f"{k}:{_fmt(v)}" for k, v in value.items()) or "none"
    return str(value)


def _fmt_float(value: float) -> str:
    """`:g`, with exponents written short (1e-5, 1e20) and numbers below 0.01 in
    scientific form (3e-4 rather than 0.0003), as learning rates are usually written."""
    if value != 0 and math.isfinite(value) and abs(value) < 1e-2:
        text = f"{value:.5e}"
    else:
        text = f"{value:g}"
    if "e" not in text:
        return text
    mantissa, _, exponent = text.partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _callable_name(rule: Any) -> str:
    return getattr(rule, "__qualname__", None) or repr(rule)


def _load_base(base: Any, root: str | Path | None, problems: list[Problem]) -> Recipe | None:
    """The `base` of a sweep TOML: a preset name, a recipe file or an inline table."""
    accepted = (
        f"a recipe preset ({', '.join(RECIPE_PRESETS)}), a path to a recipe TOML "
        "(relative to the sweep file) or a [base] table of recipe sections"
    )
    try:
        if isinstance(base, Mapping):
            return Recipe.from_dict(base)
        if isinstance(base, str) and base in RECIPE_PRESETS:
            return Recipe.preset(base)
        if isinstance(base, str):
            path = Path(base)
            if not path.is_absolute() and root is not None:
                path = Path(root) / path
            if path.is_file():
                return Recipe.from_toml(path)
            close = difflib.get_close_matches(base, list(RECIPE_PRESETS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" ({path} is no file)"
            problems.append(("base", base, accepted + hint))
            return None
    except RecipeError as err:
        problems += [(f"base.{p}", v, a) for p, v, a in err.problems]
        return None
    problems.append(("base", base, accepted))
    return None


__all__ = ["Sweep", "SweepError", "SweepPoint"]
