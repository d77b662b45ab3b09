"""Export runs to the tools people already read: `nblab export RUN_ID|SWEEP --tensorboard
DIR --mlflow URI`.

    from nblab.export import export
    export("formats-cpu", tensorboard="tb/", mlflow="mlruns/")   # {target: lines}

One module per target, registered in EXPORTERS; each has
`export(store, run_ids, destination, **options) -> list[str]` (a line per run). The CLI
makes one option per target from this table, so a new target is one entry and its
module (`--hf DIR`: a Hugging Face checkpoint of a run). Imports are lazy: `nblab export`
loads only the targets it was asked for.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nblab.runs import RunStore


@dataclass(frozen=True)
class Exporter:
    """One export target: its module, what its destination is, what it writes, and the
    extra options it takes: (keyword of its export, metavar, help) each."""

    module: str
    metavar: str
    help: str
    options: tuple[tuple[str, str, str], ...] = ()

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.options)


# what a per-run folder name keeps of a run name; anything else becomes '_'
FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")

EXPORTERS: dict[str, Exporter] = {
    "tensorboard": Exporter(
        "nblab.export.tensorboard",
        "DIR",
        "TensorBoard event files under DIR, a folder per run: metrics, quantization "
        "stats, weight histograms, the recipe",
    ),
    "mlflow": Exporter(
        "nblab.export.mlflow",
        "URI",
        "an MLflow run per run at URI (a tracking server, a database, or a local folder "
        "as a file store): recipe params, metrics with steps, tags, artifacts",
        options=(("experiment", "NAME", "the MLflow experiment (default: the run's sweep)"),),
    ),
    "hf": Exporter(
        "nblab.export.hf",
        "DIR",
        "a Hugging Face checkpoint in DIR (save_pretrained, safetensors; a GPT run as "
        "LlamaForCausalLM) with the run's tokenizer; a sweep: a folder per run",
        options=(("step", "N", "the checkpoint of step N (default: the run's latest)"),),
    ),
    "adapter": Exporter(
        "nblab.export.adapter",
        "DIR",
        "a LoRA run's adapter alone in peft's format in DIR (adapter_model.safetensors, "
        "adapter_config.json; --hf writes its merged weights); a sweep: a folder per LoRA run",
        options=(("step", "N", "the checkpoint of step N (default: the run's latest)"),),
    ),
}


def runs_of(target: str, store: RunStore) -> list[str]:
    """The run ids `target` names: a sweep (all its runs, oldest first, reruns too) or a
    run id. KeyError names it, and the known sweeps, when it is neither."""
    runs = store.runs(sweep=target)
    if not runs.empty:
        return list(runs.run_id)
    try:
        store.run(target)
    except (KeyError, ValueError):
        sweeps = sorted({s for s in store.runs().sweep if isinstance(s, str)})
        known = ", ".join(sweeps) if sweeps else "none"
        raise KeyError(
            f"{target!r} is neither a run id nor a sweep in {store.home} (sweeps: {known})"
        ) from None
    return [target]


def checkpoint_folders(
    store: RunStore, run_ids: list[str], destination: str, step: str | None
) -> Iterator[tuple[str, dict, Path, int | None]]:
    """(run_id, run, folder, step) for each run a checkpoint exporter (hf, adapter) writes:
    DIR itself for one run, DIR/<run name>-<run_id> for several (the name's '/' and other
    characters a folder name should not hold become '_'). --step names one checkpoint, so
    it takes one run."""
    if step is not None and len(run_ids) > 1:
        raise ValueError(f"--step {step} names one checkpoint; give one run, not a sweep")
    for run_id in run_ids:
        run = store.run(run_id)
        folder = Path(destination)
        if len(run_ids) > 1:
            folder = folder / f"{FOLDER_UNSAFE.sub('_', run['name'])}-{run_id}"
        yield run_id, run, folder, None if step is None else int(step)


def export(
    target: str, *, store: RunStore | None = None, **destinations: str | None
) -> dict[str, list[str]]:
    """Export the runs of `target` (a run id or a sweep) to every target given as
    `name=destination` (tensorboard="DIR", mlflow="URI"); extra keywords are options
    of the targets that take them (experiment="..." for mlflow). Returns
    {target name: lines to print}. ValueError names an unknown target or option."""
    store = store or RunStore()
    options = {k: v for k, v in destinations.items() if k not in EXPORTERS}
    chosen = {k: v for k, v in destinations.items() if k in EXPORTERS and v is not None}
    accepted = {o for e in EXPORTERS.values() for o in e.option_names}
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValueError(
            f"unknown export target or option {', '.join(unknown)}; targets: "
            f"{', '.join(EXPORTERS)}; options: {', '.join(sorted(accepted))}"
        )
    if not chosen:
        raise ValueError(f"nothing to export to: give one of {', '.join(EXPORTERS)}")
    run_ids = runs_of(target, store)
    out = {}
    for name, destination in chosen.items():
        exporter = EXPORTERS[name]
        mine = {k: v for k, v in options.items() if k in exporter.option_names and v is not None}
        module = importlib.import_module(exporter.module)
        out[name] = module.export(store, run_ids, destination, **mine)
    return out


__all__ = ["EXPORTERS", "Exporter", "checkpoint_folders", "export", "runs_of"]
