"""A synthetic JSON-lines corpus of a given size, deterministic by seed.

    .venv/bin/python benchmarks/corpus_gen.py /tmp/corpus.jsonl --mb 200

Each line is {"id": i, "source": "synthetic", "text": ...}. The text is sentences of words
drawn from a Zipf law over 30,000 made-up words (syllable strings, a few capitalised, some
digits and punctuation), in paragraphs, about 3 KB a document (log-normal lengths): close
enough to prose for a byte-level BPE to learn real merges and to tokenize at its usual speed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(rng: np.random.Generator, size: int = 30_000) -> np.ndarray:
    lengths = rng.choice([1, 2, 2, 3, 3, 3, 4], size=size)
    words = {"".join(rng.choice(SYLLABLES, n)) for n in lengths}
    words = sorted(words)
    rng.shuffle(words)
    return np.array(words, dtype=object)


def documents(seed: int):
    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    cdf = np.cumsum(1.0 / (np.arange(len(words)) + 2.7))
    cdf /= cdf[-1]
    i = 0
    while True:
        n_words = int(np.clip(rng.lognormal(6.2, 0.6), 20, 6000))  # ~500 words, ~3 KB
        drawn = words[np.minimum(np.searchsorted(cdf, rng.random(n_words)), len(words) - 1)]
        cuts = np.cumsum(rng.integers(6, 24, size=n_words // 6 + 1))
        paragraphs, sentence, start = [], [], 0
        for cut in cuts[cuts < n_words]:
            s = " ".join(drawn[start:cut])
            s = s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!", ";"])
            if rng.random() < 0.1:
                s += f" ({rng.integers(1, 2030)})"
            sentence.append(s)
            start = cut
            if rng.random() < 0.15:
                paragraphs.append(" ".join(sentence))
                sentence = []
        paragraphs.append(" ".join(sentence) or "End.")
        yield i, "\n\n".join(paragraphs)
        i += 1


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write documents until the file holds `megabytes` MB; return the document count."""
    target = int(megabytes * 1e6)
    written = count = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, text in documents(seed):
            line = json.dumps({"id": i, "source": "synthetic", "text": text}) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            count += 1
            if written >= target:
                break
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = write_corpus(args.path, args.mb, args.seed)
    print(f"{args.path}: {n} documents, {args.path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
