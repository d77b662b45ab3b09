"""The merges of a sweep beside their ingredients: what the report and the widget show.

    soup_table("ft-sweep")     # one row per merge: its val loss and exact match, its best
                               # ingredient's, soup minus best, the members' spread
    merge_table("ft-sweep")    # one row per (merge, model): the soup and each ingredient
    plot_merges("ft-sweep")    # bars: each soup beside its ingredients (val loss)
    verdict("ft-sweep")        # a sentence per merge: did the soup beat its best ingredient
                               # (and, members of several formats, each format's best)?

Everything comes from each merge run's merge.json: the merged model and every ingredient
scored on the same val batches when the merge was made (nblab.merge.run). Reads plain JSON
and the store; imports neither torch nor the trainer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from nblab.runs import RunStore

MERGE_JSON = "merge.json"  # nblab.merge.run.MERGE_JSON (not imported: that module is torch)


def merges(sweep: str, store: RunStore | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(run_id, name, merge.json) of the sweep's succeeded merge runs, oldest first."""
    store = store or RunStore()
    runs = store.runs(sweep=sweep)
    runs = runs[(runs.kind == "merge") & (runs.status == "succeeded")]
    out = []
    for run in runs.itertuples():
        path = store.run_dir(run.run_id) / MERGE_JSON
        data = json.loads(path.read_text()) if path.is_file() else {}
        if "members" in data:
            out.append((run.run_id, run.name, data))
    return out


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def best_by_format(data: dict[str, Any]) -> dict[str, float]:
    """{format: its best member's val loss} of a merge whose members trained in more than
    one format (precision preset, packed base), else {}: the soup against each format's
    best says whether averaging across formats cancelled the quantization noise."""
    best: dict[str, float] = {}
    for m in data["members"]:
        fmt = m.get("format")
        if fmt is None:  # merge.json written before members carried their format
            return {}
        best[fmt] = min(best.get(fmt, math.inf), m["val_loss"])
    return best if len(best) > 1 else {}


def soup_table(sweep: str, store: RunStore | None = None) -> pd.DataFrame:
    """One row per merge of `sweep`: method, members, how many a greedy soup took, the
    soup's val loss and exact match, its best ingredient's (lowest val loss, on the same
    batches), soup minus best (negative: the soup helped), and the members' val loss
    standard deviation (the spread the difference should be read against)."""
    rows = []
    for run_id, name, data in merges(sweep, store):
        members = data["members"]
        best = min(members, key=lambda m: m["val_loss"])
        acc, best_acc = data.get("val_accuracy"), best.get("val_accuracy")
        rows.append(
            {
                "merge": name,
                "method": data["method"],
                "members": len(members),
                "taken": len(data.get("taken") or members),
                "val_loss": data["val_loss"],
                "best_member": best["name"],
                "best_member_val_loss": best["val_loss"],
                "soup_minus_best": data["val_loss"] - best["val_loss"],
                "members_val_loss_sd": _sd([m["val_loss"] for m in members]),
                "exact_match": acc,
                "best_member_exact_match": best_acc,
                "exact_match_minus_best": None
                if acc is None or best_acc is None
                else acc - best_acc,
                "precision": data.get("precision"),
                "member_formats": len({m.get("format") for m in members}),
                "run_id": run_id,
            }
        )
    return pd.DataFrame(rows)


def merge_table(sweep: str, store: RunStore | None = None) -> pd.DataFrame:
    """One row per (merge, model): the soup first, then its ingredients (on the same val
    batches), with whether a greedy soup took each."""
    rows = []
    for _, name, data in merges(sweep, store):
        taken = set(data.get("taken") or [m["run_id"] for m in data["members"]])
        rows.append(
            {
                "merge": name,
                "model": name,
                "role": "soup",
                "val_loss": data["val_loss"],
                "exact_match": data.get("val_accuracy"),
                "taken": None,
            }
        )
        for m in data["members"]:
            rows.append(
                {
                    "merge": name,
                    "model": m["name"],
                    "role": "ingredient",
                    "val_loss": m["val_loss"],
                    "exact_match": m.get("val_accuracy"),
                    "taken": m["run_id"] in taken,
                }
            )
    return pd.DataFrame(rows)


def plot_merges(sweep: str, store: RunStore | None = None) -> Figure:
    """Val loss of each soup (dark) beside its ingredients (light), one group per merge."""
    found = merges(sweep, store)
    fig = Figure(figsize=(max(5, 2.2 * len(found)), 3.6), layout="constrained")
    ax = fig.subplots()
    if not found:
        ax.text(0.5, 0.5, "no merges in this sweep", ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
        return fig
    ticks, labels = [], []
    x = 0.0
    for _, name, data in found:
        members = data["members"]
        for i, m in enumerate(members):
            ax.bar(x + i, m["val_loss"], color="tab:blue", alpha=0.45)
        ax.bar(x + len(members), data["val_loss"], color="tab:red")
        ticks.append(x + len(members) / 2)
        labels.append(name)
        x += len(members) + 2
    ax.set_xticks(ticks, labels, rotation=15)
    losses = [m["val_loss"] for _, _, d in found for m in d["members"]] + [
        d["val_loss"] for _, _, d in found
    ]
    span = max(losses) - min(losses)
    ax.set_ylim(min(losses) - span - 1e-3, max(losses) + 0.5 * span + 1e-3)
    ax.set(ylabel="val loss (same batches)", title="each soup (red) beside its ingredients")
    ax.grid(axis="y", alpha=0.3)
    return fig


def verdict(sweep: str, store: RunStore | None = None) -> str:
    """Markdown: for each merge, whether the soup beat its best ingredient on val loss and
    exact match, and by how much against the members' spread."""
    table = soup_table(sweep, store)
    if table.empty:
        return "No merge of this sweep yet (`nblab merge SWEEP --method greedy`)."
    formats = {run_id: best_by_format(data) for run_id, _, data in merges(sweep, store)}
    lines = []
    for r in table.itertuples():
        diff = r.soup_minus_best
        if diff < 0:
            how = f"beat its best ingredient ({r.best_member}) by {-diff:.4f} val loss"
        elif diff == 0:
            how = f"equals its best ingredient ({r.best_member}) on val loss"
        else:
            how = f"is {diff:.4f} val loss worse than its best ingredient ({r.best_member})"
        line = f"- **{r.merge}** ({r.method}, {r.taken} of {r.members} members) {how}"
        if not math.isnan(r.members_val_loss_sd):
            noise = "within" if abs(diff) <= r.members_val_loss_sd else "beyond"
            line += (
                f"; the members' val losses spread by {r.members_val_loss_sd:.4f} (sd): {noise} it"
            )
        if r.exact_match is not None and r.best_member_exact_match is not None:
            line += f"; exact match {r.exact_match:.3f} against {r.best_member_exact_match:.3f}"
        best = formats[r.run_id]
        if best:
            beaten = [f for f, loss in best.items() if r.val_loss < loss]
            each = ", ".join(f"{f} {loss:.4f}" for f, loss in best.items())
            line += (
                f". Across formats, the best ingredient of each: {each}; the soup "
                f"({r.val_loss:.4f}) beat {len(beaten)} of {len(best)}"
                + (f" ({', '.join(beaten)})" if beaten else "")
            )
        lines.append(line + ".")
    return "\n".join(lines)


__all__ = ["best_by_format", "merge_table", "merges", "plot_merges", "soup_table", "verdict"]
