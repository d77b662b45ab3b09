"""A merge is a run: plan it (every check, nothing written), then make it.

    spec = plan_merge("ft-sweep", "greedy", store=store)    # or a list of run ids
    result = run_merge(spec, store=store)                     # a run of kind "merge"
    result.run_id, result.val_loss, result.soup_minus_best

plan_merge refuses bad input before anything is written, each problem a MergeError naming
its field: an unknown method, a lam / p / trim out of range, fewer than two members, a
member that is not a succeeded run with a checkpoint, members whose models differ (the
first parameter whose shape differs is named), no base for a method of task vectors.

run_merge records a run of kind "merge" in the store (its sources: the members and their
steps; in the members' sweep when they share one), folds every member to the plain model it
computes with (a LoRA run: W + B A alpha / r; a packed base dequantized;
nblab.train.finetuned), merges, and saves the merged model as the run's checkpoint (so
`model.init_from = MERGE_RUN` and `export_hf` take it). The merged model and every member
are evaluated on the same val batches (the first member's recipe: its data, seed and
eval.batches, through Trainer.evaluate), in the members' precision recipe when they share
one, else bf16. merge.json in the run folder holds the method, its options, each member's
val loss and exact match on those batches and its format, which members a greedy soup
took, and the soup minus the best member.
"""

from __future__ import annotations

import dataclasses
import json
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nblab.merge import methods
from nblab.models import build_model
from nblab.models.protocol import architecture, lm_loss, tied_weights
from nblab.recipe import Recipe
from nblab.runs import RunStore

METHODS = ("uniform", "greedy", "task-arithmetic", "ties", "dare", "fisher")
NEEDS_BASE = ("task-arithmetic", "ties", "dare")
DARE_THEN = ("task-arithmetic", "ties")
MERGE_JSON = "merge.json"
DEFAULT_TRIM = 20.0  # TIES keeps the top 20% of each task vector (Yadav et al. 2023)


class MergeError(ValueError):
    """Bad merge input: `field` (a CLI option or argument), the bad value, what is accepted."""

    def __init__(self, field: str, value: Any, accepted: str):
        self.field, self.value, self.accepted = field, value, accepted
        super().__init__(f"{field}: {value!r} -> {accepted}")


@dataclass
class MergeSpec:
    """A checked merge: the method and its options, the members (run ids with the step of
    the checkpoint taken), the base for task vectors, the sweep it belongs to."""

    method: str
    members: list[str]
    steps: list[int]
    sweep: str | None = None
    base: str | None = None  # a run id (RUN or RUN:STEP) or a folder of safetensors
    lam: float | None = None  # None: 1/n for task-arithmetic and dare, 1 for ties
    p: float = 0.0
    trim: float = DEFAULT_TRIM  # percent of each task vector TIES keeps
    then: str = "task-arithmetic"
    seed: int = 0
    top_k: int | None = None
    name: str = ""

    @property
    def scale(self) -> float:
        """The lam the method uses (its default when none was given)."""
        if self.lam is not None:
            return self.lam
        if self.method == "ties" or (self.method == "dare" and self.then == "ties"):
            return 1.0
        return 1.0 / len(self.members)

    def options(self) -> dict[str, Any]:
        """The options that matter to this method (for merge.json and the report)."""
        out: dict[str, Any] = {}
        if self.method in NEEDS_BASE:
            out["base"] = self.base
            out["lam"] = self.scale
        if self.method == "ties" or (self.method == "dare" and self.then == "ties"):
            out["trim_percent"] = self.trim
        if self.method == "dare":
            out |= {"p": self.p, "then": self.then, "seed": self.seed}
        if self.top_k is not None:
            out["top_k"] = self.top_k
        return out


def _check_options(method, lam, p, trim, then, top_k) -> None:
    if method not in METHODS:
        raise MergeError("--method", method, f"one of {', '.join(METHODS)}")
    if lam is not None and not (isinstance(lam, int | float) and 0 < lam <= 1):
        raise MergeError(
            "--lam",
            lam,
            "a number in (0, 1]: the scale of the summed task vectors, chosen in "
            "[0, 1] in Ilharco et al. 2023 (0 would give the base back)",
        )
    if not (isinstance(p, int | float) and 0 <= p < 1):
        raise MergeError("--p", p, "a drop rate in [0, 1) (DARE rescales kept entries by 1/(1-p))")
    if not (isinstance(trim, int | float) and 0 < trim <= 100):
        raise MergeError(
            "--trim", trim, "a percent in (0, 100]: the share of each task vector TIES keeps"
        )
    if then not in DARE_THEN:
        raise MergeError("--then", then, f"one of {', '.join(DARE_THEN)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise MergeError("--top-k", top_k, "an integer >= 1 (the members with the best val loss)")
    if p and method != "dare":
        raise MergeError("--p", p, "only with --method dare")
    if lam is not None and method not in NEEDS_BASE:
        raise MergeError("--lam", lam, f"only with --method {', '.join(NEEDS_BASE)}")


def _members(target: str | list[str], store: RunStore) -> tuple[list[str], str | None]:
    """(member run ids, their sweep): a sweep's latest succeeded training run of each point,
    or the run ids given."""
    names = [target] if isinstance(target, str) else list(target)
    if not names:
        raise MergeError("members", names, "a sweep name or two or more run ids")
    if len(names) == 1:
        runs = store.runs(sweep=names[0])
        if not runs.empty:
            runs = runs[runs.kind == "train"]
            latest = runs.groupby("name", sort=False).tail(1)
            ok = latest[latest.status == "succeeded"]
            return list(ok.run_id), names[0]
    sweeps = set()
    for run_id in names:
        try:
            run = store.run(run_id)
        except (KeyError, ValueError):
            raise MergeError(
                "members", run_id, "a run id of the store, or one sweep name"
            ) from None
        if run["kind"] != "train":
            raise MergeError("members", run_id, f"a training run (this one is a {run['kind']} run)")
        if run["status"] != "succeeded":
            raise MergeError("members", run_id, f"a succeeded run (this one is {run['status']})")
        sweeps.add(run["sweep"])
    return names, (sweeps.pop() if len(sweeps) == 1 else None)


def _recipe(store: RunStore, run_id: str) -> Recipe:
    return Recipe.from_toml(store.run(run_id)["recipe"])


_SHAPES: dict[tuple, tuple[int, dict[str, tuple[int, ...]]]] = {}


def plain_shapes(recipe: Recipe) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of the plain model a run of `recipe` computes with, from its
    config alone (the meta device: nothing allocated, no weights read)."""
    d = recipe.to_dict()
    key = (
        json.dumps([d["model"], d["data"], d["finetune"], d["train"]["seed"]], sort_keys=True),
        recipe.train.seq_len,
    )
    if key not in _SHAPES:
        from nblab.train.data import build_data

        vocab = build_data(recipe).vocab_size
        with torch.device("meta"):
            model = build_model(recipe.model, vocab, recipe.train.seq_len, weights=False)
        _SHAPES[key] = (vocab, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return _SHAPES[key][1]


def check_architecture(shapes: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """Every run's parameters have the first run's names and shapes; else a MergeError
    naming the first parameter (in the first run's order) that differs."""
    runs = list(shapes)
    first = shapes[runs[0]]
    for run_id in runs[1:]:
        other = shapes[run_id]
        for name, shape in first.items():
            if other.get(name) != shape:
                got = "no such parameter" if name not in other else f"shape {other[name]}"
                raise MergeError(
                    "members",
                    run_id,
                    f"the architecture of {runs[0]}: parameter {name!r} has shape {shape} there "
                    f"and {got} in {run_id} (the first parameter whose shape differs)",
                )
        extra = [n for n in other if n not in first]
        if extra:
            raise MergeError(
                "members",
                run_id,
                f"the architecture of {runs[0]}, which has no parameter {extra[0]!r}",
            )


def member_format(recipe: Recipe) -> str:
    """The numeric format a member trained in: its precision preset, and the packed base's
    format when it had one (what the report groups members by to ask whether averaging
    across formats cancels quantization noise)."""
    base = recipe.finetune.base_format
    return recipe.precision.preset + (f" (base {base})" if base else "")


def _recorded_val_loss(store: RunStore, run_id: str) -> float:
    m = store.metrics(run_id, keys="val_loss")
    return float(m.value.iloc[-1]) if len(m) else math.nan


def plan_merge(
    target: str | list[str],
    method: str,
    *,
    top_k: int | None = None,
    base: str | None = None,
    lam: float | None = None,
    p: float = 0.0,
    trim: float = DEFAULT_TRIM,
    then: str = "task-arithmetic",
    seed: int = 0,
    store: RunStore | None = None,
) -> MergeSpec:
    """Check a merge of `target` (a sweep name, or run ids) and return its spec. Raises
    MergeError naming the field; reads the store and the checkpoints' folders, writes
    nothing."""
    from nblab.train.weights import resolve

    store = store or RunStore()
    _check_options(method, lam, p, trim, then, top_k)
    members, sweep = _members(target, store)
    if top_k is not None:
        losses = {r: _recorded_val_loss(store, r) for r in members}
        missing = [r for r, v in losses.items() if math.isnan(v)]
        if missing:
            raise MergeError(
                "--top-k", top_k, f"members with a recorded val_loss; {missing[0]} has none"
            )
        members = sorted(members, key=lambda r: losses[r])[:top_k]
    if len(members) < 2:
        raise MergeError(
            "members",
            list(target) if not isinstance(target, str) else target,
            f"two or more succeeded training runs (found {len(members)})",
        )
    steps = []
    for run_id in members:
        try:
            steps.append(int(resolve(run_id, store).step))
        except ValueError as err:
            raise MergeError("members", run_id, f"a run with a checkpoint: {err}") from None
    recipes = {r: _recipe(store, r) for r in members}
    check_architecture({r: plain_shapes(rec) for r, rec in recipes.items()})
    if base is not None and method not in NEEDS_BASE:
        raise MergeError(
            "--base", base, f"only with --method {', '.join(NEEDS_BASE)} (task vectors)"
        )
    if method in NEEDS_BASE:
        if base is None:
            inits = {rec.model.init_from for rec in recipes.values()}
            if len(inits) != 1 or not next(iter(inits)):
                raise MergeError(
                    "--base",
                    None,
                    f"the run (RUN or RUN:STEP) or folder the members were fine-tuned from: "
                    f"--method {method} merges task vectors theta_i - theta_base, and the members "
                    f"do not share a model.init_from ({sorted(inits)})",
                )
            base = next(iter(inits))
        try:
            source = resolve(base, store)
        except ValueError as err:
            raise MergeError(
                "--base", base, f"a run (RUN or RUN:STEP) or a folder of safetensors: {err}"
            ) from None
        if source.kind == "run":
            base_shapes = plain_shapes(_recipe(store, source.run_id))
            check_architecture({members[0]: plain_shapes(recipes[members[0]]), base: base_shapes})
    name = f"merge-{method}" + (f"-top{top_k}" if top_k is not None else "")
    return MergeSpec(method, members, steps, sweep, base, lam, p, trim, then, seed, top_k, name)


# ---------------------------------------------------------------------------
# Making it
# ---------------------------------------------------------------------------


def merge_recipe(spec: MergeSpec, store: RunStore) -> Recipe:
    """The merged model's recipe: the first member's (its model, data, seed and eval
    batches), a plain full model (the [finetune] defaults), the members' precision recipe
    when they share one, else bf16."""
    recipes = [_recipe(store, r) for r in spec.members]
    first = recipes[0]
    data = first.to_dict()
    data["name"] = spec.name
    data["finetune"] = Recipe().to_dict()["finetune"]
    precisions = {json.dumps(r.to_dict()["precision"], sort_keys=True) for r in recipes}
    if len(precisions) > 1:
        data["precision"] = Recipe().to_dict()["precision"] | {"preset": "bf16"}
    return Recipe.from_dict(data)


class Evaluator:
    """One plain model of the merge's recipe, its precision plan applied, that loads any
    state and evaluates it with Trainer.evaluate on the recipe's val batches (its seed:
    the batches its members were evaluated on when they share data and seed)."""

    def __init__(self, recipe: Recipe):
        from nblab.train.data import build_data
        from nblab.train.trainer import Trainer

        self.dataset = build_data(recipe)  # with model.init_from: the base's tokenizer
        plain = recipe.with_overrides({"model.init_from": ""})  # weights come from load()
        model = build_model(
            recipe.model, self.dataset.vocab_size, recipe.train.seq_len, weights=False
        )
        self.tied = tied_weights(model)
        self.trainer = Trainer(plain, model=model, dataset=self.dataset)
        self.recipe = plain

    @property
    def model(self):
        return self.trainer.model

    def untie(self, state: methods.State) -> methods.State:
        """A state without the tied head (merged once, as the embedding)."""
        return {k: v for k, v in state.items() if k not in self.tied}

    def load(self, state: methods.State) -> None:
        full = dict(state)
        for head, embedding in self.tied.items():
            full[head] = full[embedding]
        device = next(self.model.parameters()).device
        own = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(full[name].to(device))

    def __call__(self, state: methods.State) -> dict[str, float]:
        self.load(state)
        return self.trainer.evaluate()

    def val_loss(self, state: methods.State) -> float:
        return self(state)["val_loss"]

    def fisher(self, state: methods.State) -> methods.State:
        """The diagonal empirical Fisher at `state`: the mean over the val sequences (one
        sequence at a time) of the squared gradient of its mean loss, per parameter."""
        self.load(state)
        t, e = self.recipe.train, self.recipe.eval
        model, arch = self.model, architecture(self.model)
        model.eval()
        params = dict(model.named_parameters(remove_duplicate=False))
        sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        generator = torch.Generator().manual_seed(t.seed + 7919)  # Trainer.evaluate's batches
        device = next(model.parameters()).device
        rows = 0
        for _ in range(e.batches):
            x, y = self.dataset.get_batch("val", t.batch_size // t.grad_accum, t.seq_len, generator)
            for i in range(x.shape[0]):
                if bool((y[i] == -100).all()):
                    continue
                model.zero_grad(set_to_none=True)
                with self.trainer._autocast():
                    loss = lm_loss(
                        arch.logits(model, x[i : i + 1].to(device)), y[i : i + 1].to(device)
                    )
                loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        sums[n] += p.grad.detach().float() ** 2
                rows += 1
        model.zero_grad(set_to_none=True)
        model.train()
        return {n: s / max(rows, 1) for n, s in sums.items()}


def _base_state(spec: MergeSpec, store: RunStore, evaluator: Evaluator) -> methods.State:
    from nblab.train.finetuned import dense_weights
    from nblab.train.weights import load_weights, resolve

    source = resolve(spec.base, store)
    if source.kind == "run":
        return dense_weights(source.run_id, source.step, store)[1]
    load_weights(evaluator.model, source)  # a folder: by name, shapes checked
    return {k: v.detach().clone().float() for k, v in evaluator.model.state_dict().items()}


@dataclass
class MergeResult:
    run_id: str
    spec: MergeSpec
    val_loss: float
    val_accuracy: float | None
    members: list[dict[str, Any]] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)

    @property
    def best_member(self) -> dict[str, Any]:
        return min(self.members, key=lambda m: m["val_loss"])

    @property
    def soup_minus_best(self) -> float:
        """The merged model's val loss minus its best member's (negative: the soup helped)."""
        return self.val_loss - self.best_member["val_loss"]


def create_merge_run(spec: MergeSpec, store: RunStore) -> str:
    """A queued run of kind merge for `spec`, its spec in merge.json."""
    recipe = merge_recipe(spec, store)
    sources = [{"run_id": r, "step": s} for r, s in zip(spec.members, spec.steps, strict=True)]
    run_id = store.create_run(
        spec.name, recipe.to_toml(), spec.sweep, steps=0, kind="merge", sources=sources
    )
    write_json(store.run_dir(run_id), {"spec": dataclasses.asdict(spec)})
    return run_id


def write_json(run_dir: Path, data: dict) -> None:
    (run_dir / MERGE_JSON).write_text(json.dumps(data, indent=1, default=str) + "\n")


def read_json(run_dir: Path) -> dict:
    return json.loads((run_dir / MERGE_JSON).read_text())


def run_merge(
    spec: MergeSpec, *, store: RunStore | None = None, run_id: str | None = None
) -> MergeResult:
    """Make the merge `spec` describes as a run of kind merge (a new one, or `run_id`,
    queued by create_merge_run). Its status ends succeeded, or failed with the error."""
    store = store or RunStore()
    run_id = run_id or create_merge_run(spec, store)
    writer = store.writer(run_id)
    try:
        result = _make(spec, store, run_id, writer)
    except BaseException as err:
        with open(store.run_dir(run_id) / "merge.log", "a") as log:  # the whole traceback
            log.write(traceback.format_exc())
        writer.close("failed", error=f"{type(err).__name__}: {err}")
        raise
    writer.close("succeeded")
    return result


def _make(spec: MergeSpec, store: RunStore, run_id: str, writer) -> MergeResult:
    from nblab.train import checkpoint
    from nblab.train.finetuned import dense_weights

    recipe = Recipe.from_toml(store.run(run_id)["recipe"])
    evaluator = Evaluator(recipe)
    states, members = [], []
    for member, step in zip(spec.members, spec.steps, strict=True):
        state = evaluator.untie(dense_weights(member, step, store)[1])
        scores = evaluator(state)
        states.append(state)
        run = store.run(member)
        members.append(
            {
                "run_id": member,
                "name": run["name"],
                "step": step,
                "val_loss": scores["val_loss"],
                "val_accuracy": scores.get("val_accuracy"),
                "recorded_val_loss": _recorded_val_loss(store, member),
                "format": member_format(_recipe(store, member)),
            }
        )
    losses = [m["val_loss"] for m in members]
    taken = list(range(len(states)))
    if spec.method == "uniform":
        merged = methods.uniform(states)
    elif spec.method == "greedy":
        merged, taken, _ = methods.greedy(states, losses, evaluator.val_loss)
    elif spec.method == "fisher":
        fishers = [evaluator.untie(evaluator.fisher(s)) for s in states]
        merged = methods.fisher(states, fishers)
    else:
        base = evaluator.untie(_base_state(spec, store, evaluator))
        if spec.method == "task-arithmetic":
            merged = methods.task_arithmetic(base, states, spec.scale)
        elif spec.method == "ties":
            merged = methods.ties(base, states, density=spec.trim / 100, lam=spec.scale)
        else:
            merged = methods.dare(
                base,
                states,
                p=spec.p,
                then=spec.then,
                lam=spec.scale,
                density=spec.trim / 100,
                seed=spec.seed,
            )
    scores = evaluator(merged)  # leaves the merged weights in the model
    checkpoint.save_model(store.run_dir(run_id) / "checkpoints", 0, evaluator.model)
    result = MergeResult(
        run_id,
        spec,
        scores["val_loss"],
        scores.get("val_accuracy"),
        members,
        [spec.members[i] for i in taken],
    )
    best = result.best_member
    metrics = dict(scores) | {"soup_minus_best_val_loss": result.soup_minus_best}
    if result.val_accuracy is not None and best.get("val_accuracy") is not None:
        metrics["soup_minus_best_val_accuracy"] = result.val_accuracy - best["val_accuracy"]
    writer.log_metrics(0, metrics)
    writer.flush()
    write_json(
        store.run_dir(run_id),
        {
            "spec": dataclasses.asdict(spec),
            "method": spec.method,
            "options": spec.options(),
            "precision": recipe.precision.preset,
            "members": members,
            "taken": result.taken,
            "val_loss": result.val_loss,
            "val_accuracy": result.val_accuracy,
            "best_member": best["run_id"],
            "soup_minus_best": metrics["soup_minus_best_val_loss"],
            "soup_minus_best_accuracy": metrics.get("soup_minus_best_val_accuracy"),
        },
    )
    return result


def start_merge(spec: MergeSpec, store: RunStore) -> str:
    """Queue a merge run for `spec` and make it in a detached process (`python -m
    nblab.merge RUN_ID`, its own session: it outlives a notebook kernel or a server
    request); return the run id at once. Its output goes to the run's merge.log."""
    import os
    import subprocess
    import sys

    run_id = create_merge_run(spec, store)
    env = dict(os.environ, NBLAB_HOME=str(store.home))
    with open(store.run_dir(run_id) / "merge.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "nblab.merge", run_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return run_id


def spec_of(run_id: str, store: RunStore) -> MergeSpec:
    """The spec a merge run was created with (its merge.json)."""
    return MergeSpec(**read_json(store.run_dir(run_id))["spec"])


__all__ = [
    "METHODS",
    "MergeError",
    "MergeResult",
    "MergeSpec",
    "check_architecture",
    "create_merge_run",
    "member_format",
    "merge_recipe",
    "plain_shapes",
    "plan_merge",
    "read_json",
    "run_merge",
    "spec_of",
    "start_merge",
]
