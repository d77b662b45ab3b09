"""Tokenize and cache a generated JSON-lines corpus, then the peak RSS of a training job on it.

    .venv/bin/python benchmarks/token_cache.py [--mb 200] [--tokenizer bpe:8192] [--steps 30]
                                              [--workdir DIR] [--out results/FILE.txt]

1. Writes a --mb MB corpus (benchmarks/corpus_gen.py) and tokenizes it into a fresh token
   cache ($NBLAB_HOME/cache under --workdir) in a child process: seconds per step, tokens/s
   and that process's peak RSS. The byte tokenizer is timed too (the same reading and
   writing, no BPE), so the cost of the pipeline and of the tokenizer show apart.
2. Runs the same short gpt-tiny training (--steps steps, one evaluation) in a fresh process
   per data set, each on a warm cache, and reads its peak RSS (VmHWM) and its final resident
   memory split into anonymous (private) and file-backed pages (the memory-mapped tokens,
   shared with every other job mapping them):
     - pydoc (char): the "empty" job the issue compares with;
     - the first 1 MB of the corpus with the same tokenizer (the same model: vocab N);
     - the whole corpus.
   Corpus memory per job = whole-corpus job - 1 MB job (same model); the target is under
   300 MB above the empty job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus_gen import write_corpus  # noqa: E402

TOKENIZE = """
import json, sys, time
from nblab.train.data import build_dataset
from nblab.train.corpus import cache_root
start = time.perf_counter()
ds = build_dataset("files", path=sys.argv[1], tokenizer=sys.argv[2])
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - start, "built": ds.built, "meta": ds.meta,
                  "bytes": sum(p.stat().st_size for p in ds.folder.glob("*.bin")),
                  "peak_mb": hwm / 1024}))
"""

TRAIN = """
import json, sys
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train
recipe = Recipe.preset("gpt-tiny").with_overrides(json.loads(sys.argv[1]))
result = train(recipe, store=RunStore())
rows = [line.split(":", 1) for line in open("/proc/self/status")]
kb = {k: int(v.split()[0]) for k, v in rows if v.strip().endswith("kB")}
print(json.dumps({"status": result.status, "step": result.step, "kb": kb,
                  "val_loss": result.metrics.get("val_loss")}))
"""


def child(code: str, *args: str, env: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--tokenizer", default="bpe:8192")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nblab-token-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NBLAB_HOME=str(work / "home"))
    lines = [
        f"token_cache benchmark: {args.mb:g} MB JSON-lines corpus, tokenizer {args.tokenizer}, "
        f"training job gpt-tiny x {args.steps} steps",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
        f", measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"1/5/15-min load at start: {load()}",
        "",
    ]

    corpus = work / "corpus.jsonl"
    small = work / "small.jsonl"
    start = time.perf_counter()
    made = "reused"
    if not corpus.exists():
        write_corpus(corpus, args.mb)
        made = f"generated in {time.perf_counter() - start:.0f} s"
    if not small.exists():
        write_corpus(small, 1.0)  # the first 1 MB of the same documents (same seed)
    size = corpus.stat().st_size
    lines.append(f"corpus: {corpus} {size / 1e6:.1f} MB ({made})")

    lines += ["", "1. tokenize into the token cache (a child process, cold cache)"]
    lines.append(
        f"{'tokenizer':12s} {'docs':>8s} {'tokens':>12s} {'read s':>7s} {'tok s':>7s} "
        f"{'encode s':>8s} {'total s':>8s} {'tokens/s':>10s} {'MB/s':>6s} {'file MB':>8s} "
        f"{'peak RSS MB':>11s}"
    )
    for tok in dict.fromkeys(["byte", args.tokenizer]):
        result, _ = child(TOKENIZE, str(corpus), tok, env=env)
        m, steps = result["meta"], result["meta"]["seconds_by_step"]
        tokens = m["train"]["tokens"] + m["val"]["tokens"]
        docs = m["train"]["documents"] + m["val"]["documents"]
        lines.append(
            f"{tok:12s} {docs:8d} {tokens:12,d} {steps['read']:7.1f} {steps['tokenizer']:7.1f} "
            f"{steps['encode']:8.1f} {m['seconds']:8.1f} {tokens / m['seconds']:10,.0f} "
            f"{size / 1e6 / m['seconds']:6.2f} {result['bytes'] / 1e6:8.1f} "
            f"{result['peak_mb']:11.0f}"
        )
        again, wall = child(TOKENIZE, str(corpus), tok, env=env)
        assert not again["built"], "the second build should hit the cache"
        lines.append(f"{'':12s} a second job finds it cached: {wall:.1f} s wall, imports included")
    child(TOKENIZE, str(small), args.tokenizer, env=env)

    lines += ["", f"2. one training job each (gpt-tiny, {args.steps} steps, bf16, warm cache)"]
    lines.append(
        f"{'data':30s} {'vocab':>6s} {'peak RSS MB':>11s} {'anon MB':>8s} {'file MB':>8s}"
        f" {'val_loss':>9s}"
    )
    common = [
        f"train.steps={args.steps}",
        f"eval.interval={args.steps}",
        "eval.batches=4",
        "train.device=cpu",
        "metrics.stats_interval=0",
        "metrics.histogram_interval=0",
    ]
    jobs = {
        "pydoc, char (empty job)": ["data.name=pydoc"],
        f"1 MB corpus, {args.tokenizer}": [
            f"data.name=files:{small}",
            f"data.tokenizer={args.tokenizer}",
        ],
        f"{size / 1e6:.0f} MB corpus, {args.tokenizer}": [
            f"data.name=files:{corpus}",
            f"data.tokenizer={args.tokenizer}",
        ],
    }
    peaks = {}
    for label, data in jobs.items():
        result, _ = child(TRAIN, json.dumps(common + data), env=env)
        assert result["status"] == "succeeded", result
        kb = result["kb"]
        peaks[label] = kb["VmHWM"] / 1024
        vocab = "pydoc" if "pydoc" in label else args.tokenizer.split(":")[-1]
        lines.append(
            f"{label:30s} {vocab:>6s} {kb['VmHWM'] / 1024:11.0f} {kb['RssAnon'] / 1024:8.0f} "
            f"{kb['RssFile'] / 1024:8.0f} {result['val_loss']:9.3f}"
        )
    empty, same_model, whole = peaks.values()
    lines += [
        "",
        f"peak RSS above the empty job (pydoc): {whole - empty:+.0f} MB (target: under 300 MB)",
        f"of which the corpus (whole corpus - 1 MB corpus, the same model): "
        f"{whole - same_model:+.0f} MB; the rest is the model's vocab {args.tokenizer} "
        f"(embedding, head and logits) against pydoc's ~100 characters",
        f"1/5/15-min load at end: {load()}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
