"""The training loop: recipe in, metrics and checkpoints out, every event in the store.

    result = train(Recipe.preset("gpt-tiny").with_overrides(["precision.preset=nvfp4"]))

Batches are drawn from a generator seeded by (seed, step, micro-batch), so the data
position is just the step and a resumed run sees exactly the batches it would have.

The model is whatever the recipe's [model] section builds (nblab.models: the built-in
GPT, a Hugging Face causal LM, a module of one's own); the trainer speaks to it only
through the model protocol (nblab.models.protocol): its Architecture's logits, blocks and
parts, its ModelShape's counts.

Under torchrun (WORLD_SIZE > 1; nblab.launch starts it) the same loop runs on every
rank: nblab.parallel.runtime builds the mesh and applies TP / FSDP2 / DDP, each dp rank
takes its rows of the same global micro-batch, the loss is divided by grad_accum x dp
before backward (gradients are SUM-reduced), and only rank 0 writes to the store. A
recipe with parallel.nproc > 1 is started with nblab.launch.launch, not train() here.

With parallel.pp > 1 (pipeline parallelism, nblab.parallel.pipeline) each rank keeps one
stage of the model; a step stacks its grad_accum micro-batches and runs the pipeline
schedule (gpipe or 1f1b) over them; the loss comes from the last stage, the gradient
norm is clipped over every stage. Each stage's first dp rank records its modules'
quantization stats and weight histograms, and rank 0 gathers them from every stage
(under TP every tp rank records the stats of its shards, and rank 0 merges them).
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import nblab_kernels as nk
from nblab import finetune
from nblab.models import build_model, model_shape, shape_of
from nblab.models.protocol import architecture, lm_loss
from nblab.models.py import from_module
from nblab.parallel import runtime
from nblab.parallel.planner import quant_bytes_per_element
from nblab.precision.plan import PlanReport, apply_precision, quant_linears
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train import checkpoint, weights
from nblab.train.data import (
    AdditionDataset,
    build_data,
    exact_match_accuracy,
    save_tokenizer,
    tokenizer_vocab_size,
)
from nblab.train.metrics import WeightHistograms, peak_memory_bytes, peak_tflops
from nblab.train.optim import build_optimizer, build_schedule

log = logging.getLogger("nblab.train")


class Diverged(RuntimeError):
    """A non-finite loss or gradient: the run stops, its last good checkpoint stays."""

    def __init__(self, step: int, cause: str):
        self.step, self.cause = step, cause
        super().__init__(f"diverged at step {step}: {cause}")


@dataclass
class TrainResult:
    run_id: str | None
    status: str  # succeeded | diverged | failed | cancelled
    step: int  # optimizer steps completed
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of each key
    error: str | None = None
    plan: PlanReport | None = None


def describe_plan(shape, plan: PlanReport) -> str:
    """A model's kind and parameter count, then every linear module with the spec of each
    of its roles, or why it stays in high precision."""
    s = shape
    head = f"model {s.kind}: {s.n_params:,} parameters ({s.n_matmul_params:,} in matmuls)"
    return f"{head}\n{plan}"


def dry_run(recipe: Recipe) -> str:
    """What training `recipe` would quantize, without training: the model is built on the
    meta device (no weights are read), the precision plan applied, the parallel layout
    validated. Nothing is written, except that a char tokenizer over a corpus of one's own
    must read the corpus for its vocabulary (and caches its tokens, as a run would).
    Raises what training would raise first."""
    recipe.validate()
    t = recipe.train
    vocab = tokenizer_vocab_size(recipe.data) or build_data(recipe).vocab_size
    shape = model_shape(recipe.model, vocab, t.seq_len)
    if recipe.parallel.nproc > 1:
        runtime.dims_for(recipe, recipe.parallel.nproc).validate(recipe, model=shape)
    with torch.device("meta"):
        model = build_model(recipe.model, vocab_size=vocab, max_seq_len=t.seq_len, weights=False)
    arch = architecture(model)
    plan = apply_precision(
        model,
        recipe.precision,
        backend=recipe.precision.backend,
        block_prefix=arch.block_prefix,
        head=arch.head,
        tokens=t.batch_size // t.grad_accum * t.seq_len,
    )
    # LoRA and a packed base from the shape alone (nothing is quantized on the meta device)
    ft = finetune.finetune_memory(recipe, shape, lambda s: quant_bytes_per_element(s, 4))
    return describe_plan(shape, plan) + (f"\n{ft.describe()}" if ft is not None else "")


def _batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + micro)


class Trainer:
    """Owns the model, optimizer and schedule of one run; `run()` trains to the end."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        model: nn.Module | None = None,
        dataset=None,
        run_dir: Path | None = None,
        writer=None,
        progress: Callable[[int, dict], None] | None = None,
    ):
        recipe.validate()
        self.recipe, self.writer, self.progress = recipe, writer, progress
        self.run_dir = run_dir
        t = recipe.train
        self.dataset = dataset if dataset is not None else build_data(recipe)
        vocab = self.dataset.vocab_size
        # of the whole model, from its config: a pipeline stage holds only part of it
        self.shape = (shape_of(model, vocab) if model is not None else None) or model_shape(
            recipe.model, vocab, t.seq_len
        )
        # None in a single process; validates the layout against the model's shape first
        self.parallel = runtime.init_distributed(recipe, self.shape)
        self.device = self.parallel.device if self.parallel else runtime.resolve_device(t.device)
        self.rank0 = self.parallel is None or self.parallel.is_rank0
        self.writer = writer if self.rank0 else None  # metrics from rank 0 only
        torch.manual_seed(t.seed)  # the same on every rank: TP / FSDP shard one init
        if model is None:
            model = build_model(recipe.model, vocab_size=vocab, max_seq_len=t.seq_len)
        model = from_module(model, vocab)  # a module handed in gets its Architecture too
        self.init_source = None
        if recipe.model.init_from:  # a fine-tuning run: start from these weights
            self.init_source = weights.resolve(recipe.model.init_from)
            weights.load_weights(model, self.init_source)
        self.arch = architecture(model)
        self.plan = apply_precision(
            model,
            recipe.precision,
            backend=recipe.precision.backend,
            block_prefix=self.arch.block_prefix,
            head=self.arch.head,
            device=self.device,
            dtype=torch.bfloat16 if t.dtype == "bfloat16" else torch.float32,
            tokens=self.micro_batch * t.seq_len,
        )
        # LoRA and a packed base go on after the plan, so their linears keep its roles
        self.finetune = finetune.prepare(model, recipe.finetune, self.arch)
        self.model = model.to(self.device)
        self._flops_per_token = self.shape.flops_per_token(t.seq_len)
        self.pipeline = None
        if self.parallel is not None:
            p = self.parallel
            if p.dims.pp > 1:
                self.pipeline = self._build_pipeline()
            else:
                runtime.apply_parallelism(self.model, p.dims, p.mesh, recipe)
            log.info("parallel layout: %s on %d processes (%s)", p.dims, p.world_size, p.device)
        self.step_fn = torch.compile(self.model) if t.compile else self.model
        self.optimizer = runtime.unmix_optimizer(build_optimizer(self.model, recipe.optimizer))
        self.scheduler = build_schedule(self.optimizer, t.steps, recipe.schedule)
        self.step = 0
        self.histograms = WeightHistograms()
        self.last: dict[str, float] = {}
        self._interval_start = (time.perf_counter(), 0)  # (time, tokens)
        self._tokens = 0
        self._losses: list[float] = []

    def _build_pipeline(self):
        from nblab.parallel.pipeline import Pipeline

        t, e = self.recipe.train, self.recipe.eval
        pp = self.parallel.dims.pp
        if t.compile:
            raise NotImplementedError(
                f"train.compile=true with parallel.pp={pp} is not supported yet; set "
                f"train.compile=false"
            )
        graded = isinstance(self.dataset, AdditionDataset) or hasattr(self.dataset, "exact_match")
        if graded and e.interval:
            raise NotImplementedError(
                f"data.name={self.recipe.data.name!r} evaluates exact-match accuracy by "
                f"generation, which parallel.pp={pp} does not support yet; set eval.interval=0 "
                f"or parallel.pp=1"
            )
        return Pipeline(self.model, self.parallel, self.recipe)

    def describe(self) -> str:
        """The model (its kind and parameter count), where its weights came from, and its
        precision plan: plan.txt."""
        text = describe_plan(self.shape, self.plan) + "\n" + self.finetune.describe()
        if self.init_source is not None:
            head, _, rest = text.partition("\n")
            text = f"{head}\n{self.init_source.describe()}\n{rest}"
        return text

    # -- pieces -------------------------------------------------------------------

    @property
    def micro_batch(self) -> int:
        t = self.recipe.train
        return t.batch_size // t.grad_accum

    def _autocast(self):
        dtype = self.recipe.train.dtype
        enabled = dtype == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @property
    def dp(self) -> int:
        return self.parallel.dp if self.parallel else 1

    def _batch(self, split: str, generator: torch.Generator):
        """The global micro-batch (the same draw on every rank), then this dp rank's rows."""
        t = self.recipe.train
        x, y = self.dataset.get_batch(split, self.micro_batch, t.seq_len, generator)
        if self.parallel is not None:
            x, y = self.parallel.dp_slice(x), self.parallel.dp_slice(y)
        return x.to(self.device), y.to(self.device)

    def _mean(self, value: float) -> float:
        """The mean over dp ranks of a per-rank loss (itself when single-process)."""
        return self.parallel.mean_over_dp(value) if self.parallel else value

    def train_step(self) -> float:
        """One optimizer step (all micro-batches). Raises Diverged on a non-finite
        loss or gradient norm, before the update touches the weights."""
        t, m = self.recipe.train, self.recipe.metrics
        record = bool(m.stats_interval) and (self.step + 1) % m.stats_interval == 0
        qlinears = quant_linears(self.model)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.pipeline is not None:
            return self._pipeline_step(qlinears, record)
        total = 0.0
        for micro in range(t.grad_accum):
            for q in qlinears.values():
                # one micro-batch is a fair sample (under TP, of each rank's shard)
                q.recording = record and micro == 0 and self._records_stats
            x, y = self._batch("train", _batch_generator(t.seed, self.step, micro))
            with self._autocast():
                loss = lm_loss(self.arch.logits(self.step_fn, x), y)
            # gradients are SUM-reduced over dp ranks: dividing by dp gives the global mean
            (loss / (t.grad_accum * self.dp)).backward()
            total += float(loss.detach())
        loss_value = self._mean(total / t.grad_accum)
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        # one norm for every layout (fp64 sums; a single process needs no collective), so
        # a layout's clipped gradients equal the single process's up to summation order
        grad_norm = float(runtime.clip_grad_norm_(self.model.parameters(), clip))
        return self._finish_step(loss_value, grad_norm, qlinears if record else None)

    def _pipeline_step(self, qlinears: dict, record: bool) -> float:
        """train_step under pp > 1: the schedule runs the grad_accum micro-batches (stacked
        into one batch it splits again), the loss comes from the last stage."""
        t = self.recipe.train
        for q in qlinears.values():
            q.recording = record and self._records_stats
        xs, ys = [], []
        for micro in range(t.grad_accum):
            x, y = self._batch("train", _batch_generator(t.seed, self.step, micro))
            xs.append(x)
            ys.append(y)
        with self._autocast():
            loss_value = self._mean(self.pipeline.train_step(torch.cat(xs), torch.cat(ys)))
        for q in qlinears.values():  # each role kept its first record: micro-batch 0's
            q.recording = False
        self.pipeline.sync_tied_grads()
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        counted, duplicates = self.pipeline.norm_parameters()
        pp = self.pipeline.pp
        grad_norm = float(runtime.clip_grad_norm_(counted, clip, pp=pp, duplicates=duplicates))
        return self._finish_step(loss_value, grad_norm, qlinears if record else None)

    def _finish_step(self, loss_value: float, grad_norm: float, recorded: dict | None) -> float:
        t = self.recipe.train
        step = self.step + 1
        if not math.isfinite(loss_value):
            raise Diverged(step, f"loss is {loss_value}")
        if not math.isfinite(grad_norm):
            raise Diverged(step, f"gradient norm is {grad_norm} (loss {loss_value:.4f})")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step = step
        self._tokens += t.batch_size * t.seq_len
        self._losses.append(loss_value)
        self._log_step(lr, grad_norm, recorded)
        return loss_value

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The eval.batches fixed validation batches that evaluate() reads (this dp rank's
        rows): the same at every evaluation, so evaluations of the run's checkpoints
        (nblab.eval) read them too."""
        generator = torch.Generator().manual_seed(self.recipe.train.seed + 7919)
        return [self._batch("val", generator) for _ in range(self.recipe.eval.batches)]

    @torch.no_grad()
    def val_loss(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """The model's mean loss over `batches` in this process, in the recipe's dtype
        (the caller sets eval mode)."""
        losses = []
        for x, y in batches:
            with self._autocast():
                loss = lm_loss(self.arch.logits(self.model, x), y)
            losses.append(float(loss))
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean val loss over eval.batches fixed batches (+ accuracy for addition)."""
        self.model.eval()
        batches = self.val_batches()
        if self.pipeline is not None:
            with self._autocast():
                losses = self.pipeline.eval_losses(batches)
            self.model.train()
            return {"val_loss": self._mean(sum(losses) / len(losses))}
        out = {"val_loss": self._mean(self.val_loss(batches))}
        if isinstance(self.dataset, AdditionDataset):
            out["val_accuracy"] = exact_match_accuracy(self.model, self.dataset, 256, self.device)
        elif hasattr(self.dataset, "exact_match"):  # instruct data: exact answers, graded
            out["val_accuracy"] = self.dataset.exact_match(self.model, 256, self.device)
        self.model.train()
        return out

    # -- logging -----------------------------------------------------------------

    def _emit(self, values: dict[str, float]) -> None:
        self.last.update(values)
        if self.writer is not None:
            self.writer.log_metrics(self.step, values)

    @property
    def _records_stats(self) -> bool:
        """Whether this rank records quantization stats: every rank of the first dp rank
        (one rank, unless TP or PP split the modules over several: under TP each quantizes
        its own shards, under PP its own stage; rank 0 gathers and merges them)."""
        return self.parallel is None or self.parallel.dp_rank == 0

    @property
    def _records_histograms(self) -> bool:
        """Whether this rank records weight histograms: the first dp and tp rank of every
        stage (the weights are gathered whole first)."""
        p = self.parallel
        return p is None or (p.dp_rank == 0 and p.tp_rank == 0)

    def _gathered(self, rows: list, contribute: bool) -> list:
        """When TP or PP split the modules over ranks: on rank 0 the rows of every rank
        that contributes, in rank order (a collective); otherwise `rows` as they are."""
        p = self.parallel
        if p is None or (p.dims.tp == 1 and p.dims.pp == 1):
            return rows
        return runtime.gather_to_rank0(rows, contribute=contribute)

    def _log_step(self, lr: float, grad_norm: float, recorded: dict | None) -> None:
        """recorded: the QuantLinears of a stats step (every rank passes them, or None)."""
        m, t = self.recipe.metrics, self.recipe.train
        if recorded is not None:
            stats = [(name, role, s) for name, q in recorded.items() for role, s in q.recorded]
            for q in recorded.values():
                q.recorded.clear()
            # under TP one (module, role) arrives from every rank of its tp group: the
            # stats of the whole tensor come from their summed energies and counts (a
            # replicated operand, the same on every rank, merges into itself)
            shards: dict[tuple[str, str], list[nk.QuantStats]] = {}
            for name, role, s in self._gathered(stats, self._records_stats):
                shards.setdefault((name, role), []).append(s)
            for (name, role), parts in shards.items():
                s = nk.merge_quant_stats(parts)
                if self.writer is not None:
                    self.writer.log_stats(
                        self.step, name, role, s.sqnr_db, s.saturation, s.underflow
                    )
        if m.histogram_interval and (self.step % m.histogram_interval == 0 or self.step == 1):
            # sharded weights are gathered whole first (a collective: every rank takes part)
            source = runtime.gathered_linears(self.model) if self.parallel else self.model
            contribute = self._records_histograms
            rows = list(self.histograms(source)) if contribute else []
            for name, edges, counts in self._gathered(rows, contribute):
                if self.writer is not None:
                    self.writer.log_histogram(self.step, name, edges, counts)
        if self.step % m.log_interval and self.step != t.steps:
            return
        now = time.perf_counter()
        start, tokens0 = self._interval_start
        tokens_per_s = (self._tokens - tokens0) / max(now - start, 1e-9)
        tflops = self._flops_per_token * tokens_per_s / 1e12
        values = {
            "loss": sum(self._losses) / len(self._losses),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": float(self._tokens),
            "tokens_per_s": tokens_per_s,
            "tflops": tflops,
            "peak_memory_bytes": float(peak_memory_bytes(self.device)),
        }
        peak = peak_tflops(self.device)
        if peak:
            values["mfu"] = tflops / (peak * (self.parallel.world_size if self.parallel else 1))
        self._emit(values)
        self._losses.clear()
        self._interval_start = (time.perf_counter(), self._tokens)
        if self.progress is not None and self.rank0:
            self.progress(self.step, self.last)

    # -- the loop ----------------------------------------------------------------

    @property
    def _checkpoint_layout(self) -> dict:
        """checkpoint.save / load's pp and aliases: the pipeline's, or none."""
        p = self.pipeline
        return {"pp": p.pp, "aliases": p.checkpoint_aliases()} if p is not None else {}

    def _checkpoint_folder(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def save_checkpoint(self) -> None:
        folder = self._checkpoint_folder()
        if folder is not None:
            keep = self.recipe.checkpoint.keep
            checkpoint.save(
                folder,
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                keep,
                **self._checkpoint_layout,
            )

    def resume(self) -> bool:
        """Continue from the latest checkpoint in the run folder, if there is one."""
        folder = self._checkpoint_folder()
        path = None if folder is None else checkpoint.latest(folder)
        if path is None:
            return False
        self.step = checkpoint.load(
            path, self.model, self.optimizer, self.scheduler, **self._checkpoint_layout
        )
        if self.writer is not None:  # steps after the checkpoint are about to run again
            self.writer.store.rewind(self.writer.run_id, self.step)
        self._tokens = self.step * self.recipe.train.batch_size * self.recipe.train.seq_len
        self._interval_start = (time.perf_counter(), self._tokens)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def run(self) -> dict[str, float]:
        t, e, c = self.recipe.train, self.recipe.eval, self.recipe.checkpoint
        log.info("%s", self.describe())
        if self.writer is not None:
            self.writer.store.set_params(self.writer.run_id, self.shape.n_params)
        # NBLAB_STEP_DELAY_S: a pause after every step, so that tests of time limits and
        # preemption can make a run outlast a limit on a machine of any speed
        delay = float(os.environ.get("NBLAB_STEP_DELAY_S", "0") or 0)
        while self.step < t.steps:
            self.train_step()
            if delay:
                time.sleep(delay)
            if e.interval and (self.step % e.interval == 0 or self.step == t.steps):
                self._emit(self.evaluate())
            if c.interval and self.step % c.interval == 0 and self.step != t.steps:
                self.save_checkpoint()
            if self.writer is not None:
                self.writer.flush()  # the step's events and the heartbeat, one transaction
        self.save_checkpoint()
        return dict(self.last)


def _file_log(run_dir: Path) -> logging.Handler:
    """train.log: everything from rank 0; from the other ranks of a parallel run only
    errors (their tracebacks), marked with the rank."""
    handler = logging.FileHandler(run_dir / "train.log")
    tag = f" [rank {runtime.rank()}]" if runtime.world_size() > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(message)s"))
    if not runtime.is_rank0():
        handler.setLevel(logging.ERROR)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def train(
    recipe: Recipe,
    *,
    store: RunStore | None = None,
    run_id: str | None = None,
    sweep: str | None = None,
    model: nn.Module | None = None,
    dataset=None,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train `recipe`, recording the run in `store` (default: $NBLAB_HOME).

    run_id: an existing (e.g. queued by a launcher, or interrupted) run to use;
    resume=True continues it from its latest checkpoint. Exceptions other than
    divergence are recorded as `failed` and raised again.

    This process trains: under torchrun every rank calls train() with the same run_id
    (nblab.launch starts them), and rank 0 alone writes the run's events and status. A
    recipe with parallel.nproc > 1 in a single process is refused: start it with
    nblab.launch.launch, which runs torchrun (or this function when nproc is 1)."""
    recipe.validate()
    store = store or RunStore()
    if recipe.parallel.nproc > 1 and runtime.world_size() == 1:
        raise ValueError(
            f"parallel.nproc={recipe.parallel.nproc} needs torchrun: start the run with "
            f"nblab.launch.launch(recipe), not nblab.train.trainer.train"
        )
    if run_id is None and runtime.world_size() > 1:
        raise ValueError("under torchrun every rank needs the same run_id (nblab.launch)")
    if run_id is None:
        run_id = store.create_run(recipe.name, recipe.to_toml(), sweep, steps=recipe.train.steps)
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _file_log(run_dir)
    from nblab.export.tensorboard import mirror  # metrics.tensorboard: live event files

    writer = mirror(store.writer(run_id), recipe, run_dir) if runtime.is_rank0() else None
    trainer = None
    try:
        log.info("run %s (pid %d): %s", run_id, os.getpid(), recipe.name)
        trainer = Trainer(
            recipe, model=model, dataset=dataset, run_dir=run_dir, writer=writer, progress=progress
        )
        if trainer.rank0:
            (run_dir / "plan.txt").write_text(trainer.describe() + "\n")
            if hasattr(getattr(trainer.dataset, "tokenizer", None), "save"):
                save_tokenizer(trainer.dataset, run_dir)  # run_dir/tokenizer: what it read
            if trainer.init_source is not None:
                weights.record(run_dir, trainer.init_source)
        if resume:
            trainer.resume()
        metrics = trainer.run()
        if writer is not None:
            writer.close("succeeded")
        return TrainResult(run_id, "succeeded", trainer.step, metrics, plan=trainer.plan)
    except Diverged as err:
        log.error("%s", err)
        if writer is not None:
            writer.close("diverged", error=str(err))
        return TrainResult(
            run_id, "diverged", err.step - 1, dict(trainer.last), str(err), trainer.plan
        )
    except KeyboardInterrupt:
        log.error("cancelled")
        if writer is not None:
            writer.close("cancelled", error="cancelled by the user")
        raise
    except BaseException as err:
        log.error("failed:\n%s", traceback.format_exc())
        if writer is not None:
            writer.close("failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
