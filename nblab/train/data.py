"""Datasets, registered by name in DATASETS. Everything is offline: nothing is downloaded.

    ds = build_dataset("pydoc")                      # char-level stdlib docs, ~465k chars
    ds = build_dataset("text:/data/shakespeare.txt", tokenizer="byte")
    ds = build_dataset("files:/data/corpus/", tokenizer="bpe:8192")  # jsonl / parquet / txt
    ds = build_dataset("addition", digits=3)         # "123+456=" -> "975$" (reversed sum)
    x, y = ds.get_batch("train", 16, 128, torch.Generator().manual_seed(0))  # (B, T) each
    ds = build_data(recipe)                          # the same, from a recipe's [data]

Every dataset follows the ``Dataset`` protocol below. ``y`` is ``x`` shifted by one token;
positions whose loss must be left out hold -100 (the model's ``ignore_index``). Batches are
built on the CPU from ``generator`` alone, so a seeded generator replays the same batches.

pydoc, text and hf are one token stream cut in two (val is its end) with a char or byte
tokenizer; files is a corpus of documents, split by document, with any tokenizer of
nblab.train.tokenizer (bpe:N, a local tokenizer.json), tokenized once into a shared token
cache (nblab.train.corpus). Recipe validation calls data_problems (recipe.SOURCE_CHECKS).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from nblab.models.protocol import IGNORE_INDEX, greedy_generate
from nblab.train.instruct import build_instruct, instruct_options
from nblab.train.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    Tokenized,
    Tokenizer,
    TokenizerError,
    load_path,
    parse_spec,
)

SPLITS = ("train", "val")


class MissingDependencyError(ImportError):
    """An optional package a dataset needs is not installed; the message says how to get it."""


class Dataset(Protocol):
    vocab_size: int  # the model's vocabulary: ids run from 0 to vocab_size - 1
    tokenizer: Tokenizer

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> str: ...


TOKENIZERS = ("byte", "char")  # the built-in names; data.tokenizer also takes bpe:N and paths


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; accepted: {list(SPLITS)}")


def check_batch_args(split: str, batch_size: int, seq_len: int) -> None:
    """The checks every get_batch makes on its arguments."""
    _check_split(split)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("seq_len", seq_len)


def window_starts(
    split: str,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    tokens: dict,
    where: str,
) -> torch.Tensor:
    """The first token of each of a batch's random windows of seq_len + 1 tokens in
    tokens[split]; `where` names the token stream in the error when it is too short."""
    check_batch_args(split, batch_size, seq_len)
    n_tokens = len(tokens[split])
    if n_tokens < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} needs {seq_len + 1} tokens, but split {split!r} of {where} "
            f"has {n_tokens}"
        )
    return torch.randint(0, n_tokens - seq_len, (batch_size,), generator=generator)  # (B,)


# ---------------------------------------------------------------------------------------------
# token streams: pydoc, text, hf


class TokenStreamDataset(Tokenized):
    """A token stream cut in two: train, then val. get_batch takes random windows of
    seq_len + 1 tokens from one split; no target is masked."""

    def __init__(
        self, name: str, source: str, tokenizer: CharTokenizer | ByteTokenizer, train, val
    ) -> None:
        self.name, self.source, self.tokenizer = name, source, tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.tokens = {
            "train": torch.tensor(train, dtype=torch.int32),
            "val": torch.tensor(val, dtype=torch.int32),
        }

    @classmethod
    def from_text(
        cls,
        name: str,
        source: str,
        text: str | bytes,
        tokenizer: str,
        val_fraction: float,
        val_text: str | bytes | None = None,
    ) -> TokenStreamDataset:
        """Tokenize text; val is val_text if given, else the last val_fraction of text.
        bytes are taken as already UTF-8 encoded (tokenizer="byte" only)."""
        whole = text if val_text is None else text + val_text
        if tokenizer == "char":
            tok = CharTokenizer("".join(sorted(set(whole))))
            ids = tok.encode(text)
            val_ids = None if val_text is None else tok.encode(val_text)
        else:
            tok = ByteTokenizer()
            ids = list(text) if isinstance(text, bytes) else tok.encode(text)
            if val_text is not None:
                val_ids = list(val_text) if isinstance(val_text, bytes) else tok.encode(val_text)
            else:
                val_ids = None
        if val_ids is None:
            n_train = int(len(ids) * (1 - val_fraction))
            ids, val_ids = ids[:n_train], ids[n_train:]
        if not ids or not val_ids:
            raise ValueError(
                f"dataset {name!r} from {source}: {len(ids)} train and {len(val_ids)} val tokens; "
                f"both splits need text (val_fraction={val_fraction})"
            )
        return cls(name, source, tok, ids, val_ids)

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"dataset {self.name!r}" + (f" ({self.source})" if self.source else "")
        starts = window_starts(split, batch_size, seq_len, generator, self.tokens, where)
        data = self.tokens[split]
        windows = data[starts[:, None] + torch.arange(seq_len + 1)].long()  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # x (B, T), y (B, T)

    def describe(self) -> str:
        n_train, n_val = len(self.tokens["train"]), len(self.tokens["val"])
        return (
            f"{self.name}: {self.tokenizer.kind}-level, vocab {self.vocab_size}, "
            f"train {n_train:,} tokens, val {n_val:,} tokens (the last "
            f"{n_val / (n_train + n_val):.1%}), from {self.source}"
        )


def pydoc_text() -> str:
    """The stdlib's pydoc topics (help() pages) joined in sorted-key order: ~465k chars."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def build_pydoc(*, path=None, tokenizer="char", val_fraction=0.1, seed=0) -> TokenStreamDataset:
    if path is not None:
        raise ValueError(
            f"path={path!r}: dataset 'pydoc' reads pydoc_data.topics and takes no path"
        )
    return TokenStreamDataset.from_text(
        "pydoc", "pydoc_data.topics", pydoc_text(), tokenizer, val_fraction
    )


def _existing(path, name: str, *, want_dir: bool) -> Path:
    if path is None:
        hint = "a folder saved by Dataset.save_to_disk" if want_dir else "a UTF-8 text file"
        raise ValueError(f"dataset {name!r} needs path=... ({hint}); got path=None")
    p = Path(path).expanduser()
    if not (p.is_dir() if want_dir else p.is_file()):
        kind = "folder" if want_dir else "file"
        raise ValueError(f"path={str(path)!r} for dataset {name!r}: no such {kind}")
    return p


def build_text(*, path=None, tokenizer="char", val_fraction=0.1, seed=0) -> TokenStreamDataset:
    p = _existing(path, "text", want_dir=False)
    raw = p.read_bytes()
    if tokenizer == "byte":
        return TokenStreamDataset.from_text("text", str(p), raw, tokenizer, val_fraction)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"path={str(path)!r} is not valid UTF-8 at byte {e.start}; tokenizer='char' needs "
            f"UTF-8 text, tokenizer='byte' reads any bytes"
        ) from None
    return TokenStreamDataset.from_text("text", str(p), text, tokenizer, val_fraction)


HF_VAL_SPLITS = ("validation", "val", "test")


def build_hf(
    *, path=None, tokenizer="char", val_fraction=0.1, seed=0, text_column="text"
) -> TokenStreamDataset:
    """A Hugging Face dataset saved with save_to_disk. A DatasetDict with a "train" split and
    one of "validation" / "val" / "test" keeps its splits; a single Dataset is cut like text.
    Documents are joined with "\\n"."""
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError(
            "dataset 'hf' needs the Hugging Face `datasets` package, which is not installed: "
            "run `pip install datasets` (or use dataset 'text' on a plain text file)"
        ) from e
    p = _existing(path, "hf", want_dir=True)
    loaded = datasets.load_from_disk(str(p))

    def joined(ds, split: str) -> str:
        if text_column not in ds.column_names:
            raise ValueError(
                f"text_column={text_column!r} is not a column of split {split!r} in {p}; "
                f"accepted: {ds.column_names}"
            )
        return "\n".join(ds[text_column])

    if isinstance(loaded, datasets.DatasetDict):
        val_name = next((s for s in HF_VAL_SPLITS if s in loaded), None)
        if "train" not in loaded or val_name is None:
            raise ValueError(
                f"the DatasetDict at {p} has splits {list(loaded)}; it needs 'train' and one of "
                f"{list(HF_VAL_SPLITS)} (or save a single Dataset to split by val_fraction)"
            )
        train, val = joined(loaded["train"], "train"), joined(loaded[val_name], val_name)
        return TokenStreamDataset.from_text("hf", str(p), train, tokenizer, val_fraction, val)
    return TokenStreamDataset.from_text(
        "hf", str(p), joined(loaded, "train"), tokenizer, val_fraction
    )


# ---------------------------------------------------------------------------------------------
# addition


class AdditionDataset(Tokenized):
    """Reversed-sum addition: "123+456=" then the sum's digits reversed, then END:
    "123+456=975$" (579 reversed). Operands are zero-padded to `digits` digits, so every
    prompt has the same length; the answer is not padded ("003+004=7$").

    A row of get_batch starts at a problem and holds (seq_len + 1) // (3 * digits + 4) problems
    (the longest problem fits that many times), then PAD. Targets are -100 except where the next
    token is an answer digit or END. Train and val draw from disjoint sets of problems: an
    unordered operand pair {a, b} is val when a seeded hash of it falls below val_fraction, so
    a+b and b+a are always on the same side."""

    END, PAD = "$", "."
    VOCAB = "0123456789+=" + END + PAD

    def __init__(self, digits: int = 3, val_fraction: float = 0.1, seed: int = 0) -> None:
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 18:
            raise ValueError(f"digits={digits!r} must be an integer from 1 to 18")
        self.digits, self.val_fraction, self.seed = digits, val_fraction, seed
        self.tokenizer = CharTokenizer(self.VOCAB)
        self.vocab_size = self.tokenizer.vocab_size
        self.prompt_len = 2 * digits + 2  # "aaa+bbb="
        self.max_answer_len = digits + 2  # up to digits + 1 sum digits, then END
        self.max_problem_len = self.prompt_len + self.max_answer_len

    def prompt(self, a: int, b: int) -> str:
        return f"{a:0{self.digits}d}+{b:0{self.digits}d}="

    def answer(self, a: int, b: int) -> str:
        return str(a + b)[::-1] + self.END

    def is_val(self, a: int, b: int) -> bool:
        key = f"{self.seed}:{min(a, b)}+{max(a, b)}".encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64
        return u < self.val_fraction

    def sample_problems(
        self, split: str, n: int, generator: torch.Generator
    ) -> list[tuple[int, int]]:
        """n operand pairs (a, b) of the split, drawn with replacement."""
        _check_split(split)
        want_val = split == "val"
        problems: list[tuple[int, int]] = []
        for _ in range(1000):
            ab = torch.randint(0, 10**self.digits, (2, 2 * n + 16), generator=generator)
            for a, b in zip(ab[0].tolist(), ab[1].tolist(), strict=True):
                if self.is_val(a, b) == want_val:
                    problems.append((a, b))
                    if len(problems) == n:
                        return problems
        raise ValueError(
            f"split {split!r} of addition digits={self.digits}, val_fraction={self.val_fraction}, "
            f"seed={self.seed} is (nearly) empty; raise digits or change val_fraction"
        )

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(split, batch_size, seq_len)
        per_row = (seq_len + 1) // self.max_problem_len
        if per_row == 0:
            raise ValueError(
                f"seq_len={seq_len} is too short for addition digits={self.digits}: a problem "
                f"takes up to {self.max_problem_len} tokens, so seq_len must be at least "
                f"{self.max_problem_len - 1}"
            )
        problems = self.sample_problems(split, batch_size * per_row, generator)
        pad = self.tokenizer.stoi[self.PAD]
        rows, masks = [], []
        for r in range(batch_size):
            row: list[int] = []
            keep: list[bool] = []  # keep[j]: token j is a target (answer digit or END)
            for a, b in problems[r * per_row : (r + 1) * per_row]:
                p, ans = self.encode(self.prompt(a, b)), self.encode(self.answer(a, b))
                row += p + ans
                keep += [False] * len(p) + [True] * len(ans)
            fill = seq_len + 1 - len(row)
            rows.append(row + [pad] * fill)
            masks.append(keep + [False] * fill)
        tokens = torch.tensor(rows)  # (B, T + 1)
        targets = torch.tensor(masks)  # (B, T + 1)
        x = tokens[:, :-1]  # (B, T)
        y = tokens[:, 1:].masked_fill(~targets[:, 1:], IGNORE_INDEX)  # (B, T)
        return x, y

    def describe(self) -> str:
        return (
            f"addition: {self.digits}-digit operands, answer reversed then {self.END!r} "
            f"(e.g. {self.prompt(123 % 10**self.digits, 456 % 10**self.digits)!r} -> "
            f"{self.answer(123 % 10**self.digits, 456 % 10**self.digits)!r}), vocab "
            f"{self.vocab_size}, val = {self.val_fraction:.0%} of unordered operand pairs "
            f"(seed {self.seed}), loss on answer tokens only"
        )


def build_addition(
    *, path=None, tokenizer="char", val_fraction=0.1, seed=0, digits=3
) -> AdditionDataset:
    if path is not None:
        raise ValueError(f"path={path!r}: dataset 'addition' is generated and takes no path")
    if tokenizer != "char":
        raise ValueError(
            f"tokenizer={tokenizer!r}: dataset 'addition' has its own {len(AdditionDataset.VOCAB)}"
            f"-symbol vocabulary; accepted: ['char']"
        )
    return AdditionDataset(digits=digits, val_fraction=val_fraction, seed=seed)


@torch.no_grad()
def exact_match_accuracy(
    model: torch.nn.Module,
    dataset: AdditionDataset,
    n: int,
    device: torch.device | str,
    *,
    batch_size: int = 256,
) -> float:
    """Fraction of n val problems whose greedy answer (up to and including END) is exactly
    right. The problems come from a generator seeded by dataset.seed, so every call grades the
    same n problems. The model keeps its device; the mode it came in with is restored."""
    if not isinstance(dataset, AdditionDataset):
        raise ValueError(
            f"dataset={type(dataset).__name__}: exact_match_accuracy grades AdditionDataset only"
        )
    _check_positive_int("n", n)
    problems = dataset.sample_problems("val", n, torch.Generator().manual_seed(dataset.seed))
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, n, batch_size):
            chunk = problems[start : start + batch_size]
            prompts = torch.tensor(
                [dataset.encode(dataset.prompt(a, b)) for a, b in chunk], device=device
            )  # (b, prompt_len)
            out = greedy_generate(model, prompts, dataset.max_answer_len)  # (b, P + A)
            for (a, b), ids in zip(chunk, out[:, dataset.prompt_len :].tolist(), strict=True):
                text = dataset.decode(ids)
                got = text[: text.index(dataset.END) + 1] if dataset.END in text else text
                correct += got == dataset.answer(a, b)
    finally:
        model.train(was_training)
    return correct / n


# ---------------------------------------------------------------------------------------------
# files: a local corpus of documents


def build_files(
    *,
    path=None,
    tokenizer="char",
    val_fraction=0.1,
    seed=0,
    text_column="text",
    text_documents="paragraph",
    split_seed=0,
    cache_dir=None,
):
    """A local corpus (nblab.train.corpus): a file, folder or glob of .txt / .jsonl / .json /
    .parquet files. Tokenized once into the token cache under cache_dir (default
    $NBLAB_HOME/cache); train.seed (`seed`) is not used: the split follows split_seed, so
    runs that differ in seed share one split and one cache."""
    from nblab.train import corpus

    if text_documents not in corpus.TEXT_DOCUMENTS:
        raise ValueError(
            f"text_documents={text_documents!r} is not a way to cut text files; accepted: "
            f"{list(corpus.TEXT_DOCUMENTS)}"
        )
    try:
        parse_spec(tokenizer)
        files = corpus.corpus_files("" if path is None else str(path))
        corpus.check_text_column(files, text_column)
    except TokenizerError as err:
        raise ValueError(f"tokenizer={tokenizer!r}: accepted: {err}") from None
    spec = corpus.CorpusSpec(
        tuple(files), text_column, text_documents, tokenizer, val_fraction, split_seed
    )
    folder, built = corpus.token_cache(spec, Path(cache_dir) if cache_dir else None)
    return corpus.CorpusDataset(folder, built)


# ---------------------------------------------------------------------------------------------
# registry


DATASETS: dict[str, Callable[..., Dataset]] = {
    "addition": build_addition,
    "files": build_files,
    "hf": build_hf,
    "instruct": build_instruct,  # prompt / response jsonl, loss on responses (instruct.py)
    "pydoc": build_pydoc,
    "text": build_text,
}


def build_dataset(
    name: str, *, path=None, tokenizer: str = "char", val_fraction: float = 0.1, seed: int = 0, **kw
) -> Dataset:
    """build_dataset("pydoc"), build_dataset("text", path=...), or the shorthand
    build_dataset("text:/path/file.txt"). Extra keywords go to the dataset (addition:
    digits; hf: text_column; files: text_column, text_documents, split_seed, cache_dir).
    path="" counts as no path (the recipe's default)."""
    if path == "":
        path = None
    if ":" in name:
        name, _, shorthand = name.partition(":")
        if path is not None and str(path) != shorthand:
            raise ValueError(
                f"path={str(path)!r} disagrees with the path {shorthand!r} in the dataset name"
            )
        path = shorthand
    if name not in DATASETS:
        raise ValueError(f"dataset name={name!r} is not registered; accepted: {sorted(DATASETS)}")
    if name != "files" and tokenizer not in TOKENIZERS:
        raise ValueError(
            f"tokenizer={tokenizer!r} is not a tokenizer of dataset {name!r}; accepted: "
            f"{list(TOKENIZERS)} (bpe:N and tokenizer paths need dataset 'files')"
        )
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise ValueError(f"val_fraction={val_fraction!r} must be a number between 0 and 1")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be strictly between 0 and 1")
    builder = DATASETS[name]
    accepted = set(builder.__kwdefaults__ or {}) - {"path", "tokenizer", "val_fraction", "seed"}
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise ValueError(
            f"{unknown[0]}={kw[unknown[0]]!r} is not an option of dataset {name!r}; "
            f"accepted: {sorted(accepted)}"
        )
    return builder(path=path, tokenizer=tokenizer, val_fraction=val_fraction, seed=seed, **kw)


# ---------------------------------------------------------------------------------------------
# from a recipe: the dataset, its checks, its vocab size, its saved tokenizer

TOKENIZER_DIR = "tokenizer"  # the run folder's copy of the run's tokenizer (save_tokenizer)


def build_data(recipe, *, cache_dir=None) -> Dataset:
    """The dataset of recipe.data (train.seed seeds the addition split). cache_dir: where
    a files corpus's tokens are cached (default $NBLAB_HOME/cache)."""
    d = recipe.data
    extra: dict[str, Any] = {}
    if d.name == "addition":
        extra = {"digits": d.digits}
    elif d.name == "hf":
        extra = {"text_column": d.text_column}
    elif d.name == "files":
        extra = {
            "text_column": d.text_column,
            "text_documents": d.text_documents,
            "split_seed": d.split_seed,
            "cache_dir": cache_dir,
        }
    elif d.name == "instruct":  # fine-tuning data: its field names, the base run's tokenizer
        extra = instruct_options(recipe, build_data)
    return build_dataset(
        d.name,
        path=d.path or None,
        tokenizer=d.tokenizer,
        val_fraction=d.val_fraction,
        seed=recipe.train.seed,
        **extra,
    )


def save_tokenizer(dataset: Dataset, run_dir: str | Path) -> Path:
    """Write the dataset's tokenizer to run_dir/tokenizer/ (tokenizer.json and
    tokenizer_config.json, which transformers' AutoTokenizer loads); return that folder."""
    return dataset.tokenizer.save(Path(run_dir) / TOKENIZER_DIR)


def tokenizer_vocab_size(data) -> int | None:
    """The vocab size recipe.data's tokenizer gives, without reading the corpus: bpe:N -> N
    (the model's vocab; a small corpus may train fewer tokens), a path -> its tokenizer's
    size with added tokens, byte -> 256 (257 for files: end-of-text), char -> known for
    pydoc and addition only (None otherwise: it comes from the corpus). None when the
    tokenizer is invalid (data_problems says why)."""
    try:
        kind, arg = parse_spec(data.tokenizer)
        if kind == "path":
            return load_path(arg).vocab_size
    except (TokenizerError, TypeError, AttributeError):
        return None
    if kind == "bpe":
        return arg
    if kind == "byte":
        return 257 if data.name == "files" else 256
    if data.name == "addition":
        return len(AdditionDataset.VOCAB)
    if data.name == "pydoc":
        return _pydoc_vocab_size()
    return None


@functools.cache
def _pydoc_vocab_size() -> int:
    return len(set(pydoc_text()))


Problem = tuple[str, Any, str]
BUILTIN_DATASETS = ("pydoc", "addition")  # generated: no path


def vocab_problems(recipe) -> list[Problem]:
    """A model that keeps its own embedding (a Hugging Face checkpoint with weights) with
    fewer rows than the tokenizer has ids: the problem names both numbers."""
    from nblab.models import embedding_rows

    try:
        rows = embedding_rows(recipe.model)
    except (ValueError, OSError):
        return []  # model_problems names what is wrong with the model
    vocab = tokenizer_vocab_size(recipe.data)
    if rows is None or vocab is None or vocab <= rows:
        return []
    return [
        (
            "data.tokenizer",
            recipe.data.tokenizer,
            f"a tokenizer of at most {rows} ids: model.path's embedding has {rows} rows, "
            f"but this tokenizer has {vocab} ids",
        )
    ]


def data_problems(recipe) -> list[Problem]:
    """What recipe.data names that does not exist or does not fit, as (field path, bad
    value, what is accepted). Cheap: reads a corpus file's first record (cached by path,
    size and mtime) and a tokenizer file (cached by path and mtime), nothing more."""
    d = recipe.data
    problems = _tokenizer_problems(d)
    try:
        problems += _source_problems(d)
    except Exception as err:  # noqa: BLE001 - a strange path must give a problem, not a crash
        problems.append(
            ("data.path", d.path, f"a readable local path ({type(err).__name__}: {err})")
        )
    return problems


def _tokenizer_problems(d) -> list[Problem]:
    spec = d.tokenizer
    try:
        kind, arg = parse_spec(spec)
        if kind == "path":
            load_path(arg)
    except TokenizerError as err:
        hint = [] if spec.startswith("bpe") else difflib.get_close_matches(spec, TOKENIZERS, n=1)
        why = str(err) + (f"; did you mean {hint[0]!r}?" if hint else "")
        return [("data.tokenizer", spec, why)]
    except Exception as err:  # noqa: BLE001 - e.g. a path with a NUL byte
        return [("data.tokenizer", spec, f"a readable local tokenizer path ({err})")]
    if d.name == "addition" and kind != "char":
        vocab = len(AdditionDataset.VOCAB)
        return [
            (
                "data.tokenizer",
                spec,
                f"char: dataset 'addition' has its own {vocab}-symbol vocabulary",
            )
        ]
    if d.name != "files" and kind not in TOKENIZERS:
        return [
            (
                "data.tokenizer",
                spec,
                f"char or byte for data.name={d.name!r}; bpe:N and tokenizer paths tokenize "
                f"documents: use data.name='files' with data.path a file, folder or glob",
            )
        ]
    return []


def _source_problems(d) -> list[Problem]:
    from nblab.train import corpus

    if d.name in BUILTIN_DATASETS:
        if d.path:
            return [("data.path", d.path, f"empty: dataset {d.name!r} takes no path")]
        return []
    if not d.path:  # the recipe's own check names the missing path
        return []
    p = Path(d.path).expanduser()
    never = "nblab reads local files only and never downloads, so a hub name is refused"
    if d.name == "text":
        return (
            [] if p.is_file() else [("data.path", d.path, f"an existing local text file; {never}")]
        )
    if d.name == "hf":
        return _hf_problems(p, d, never)
    if d.name == "files":
        try:
            corpus.check_text_column(corpus.corpus_files(d.path), d.text_column)
        except corpus.CorpusError as err:
            return [err.problem]
    return []


def _hf_problems(p: Path, d, never: str) -> list[Problem]:
    """A save_to_disk folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json),
    whose features (dataset_info.json) hold the text column."""
    if (p / "dataset_dict.json").is_file():
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        info = next((p / s / "dataset_info.json" for s in splits), None)
    elif (p / "state.json").is_file():
        info = p / "dataset_info.json"
    else:
        return [
            (
                "data.path",
                d.path,
                f"a local folder saved by datasets' save_to_disk (with state.json or "
                f"dataset_dict.json); {never}",
            )
        ]
    try:
        features = json.loads(info.read_text()).get("features") or {}
    except (OSError, ValueError, AttributeError):
        return []  # load_from_disk will say what is wrong with it
    if features and d.text_column not in features:
        return [("data.text_column", d.text_column, f"a column of {p}; it has {sorted(features)}")]
    return []
