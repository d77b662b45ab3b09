"""Local corpora (`data.name = "files"`): text, JSON lines and parquet files, or a folder or
glob of them, read with Hugging Face `datasets` and never fetched from a hub.

    files = corpus_files("/data/corpus/")          # sorted; folders are walked
    folder, built = token_cache(CorpusSpec(files, "text", "paragraph", "bpe:8192", 0.1, 0))
    ds = CorpusDataset(folder)                     # get_batch reads windows of its token files

A document is a record's `text_column` (JSON lines, JSON, parquet) or a piece of a text file
(`text_documents`: a line, a paragraph between blank lines, or the whole file). Empty and
null texts are skipped. The split is by document: `round(n * val_fraction)` documents (at
least 1, at most n - 1) chosen by a permutation seeded by `split_seed` are val; each split
keeps the corpus order and ends every document with the tokenizer's end-of-text id.

The tokens of each split are written once to a flat uint16 / uint32 file under
$NBLAB_HOME/cache/tokens/<key>/, the key a hash of the corpus files, the tokenizer and the
split settings. Files are fingerprinted by path, size and modification time, not content:
every job of a sweep computes the key before training, and hashing a 1 GB corpus in every
job costs seconds of reading, while any write to a file changes its mtime (a copy or a
`touch` only costs a fresh tokenization). Concurrent jobs take a file lock: one tokenizes
into a temporary folder and renames it into place, the others wait and then read its files.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nblab.train.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    Tokenized,
    load_path,
    parse_spec,
    train_bpe,
)

log = logging.getLogger("nblab.train")

# file suffix -> how it is read; ".gz" after a text or JSON suffix is read compressed
FORMATS = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
# data.text_documents -> datasets' text `sample_by`
TEXT_DOCUMENTS = {"line": "line", "paragraph": "paragraph", "file": "document"}
FILES_ACCEPTED = (
    "an existing local file, folder or glob of .txt, .md, .jsonl, .json or .parquet files "
    "(.gz for text and JSON); nblab reads local files only and never downloads, so a hub "
    "dataset name is refused"
)
CACHE_VERSION = 1
BATCH_DOCS = 1000  # documents per datasets batch and per encode call


class CorpusError(ValueError):
    """A corpus the recipe cannot use; `.problem` is (field path, bad value, accepted)."""

    def __init__(self, field: str, value, accepted: str) -> None:
        self.problem = (field, value, accepted)
        super().__init__(f"{field}: {value!r} -> {accepted}")


def cache_root() -> Path:
    """$NBLAB_HOME/cache (the run store's home, as RunStore resolves it)."""
    home = os.environ.get("NBLAB_HOME") or Path.home() / ".nblab"
    return Path(home).expanduser() / "cache"


# ---------------------------------------------------------------------------------------------
# which files, and what their first record holds


def file_format(path: Path) -> str | None:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    fmt = FORMATS.get(suffixes[0].lower()) if suffixes else None
    if fmt == "parquet" and path.suffix == ".gz":
        return None
    return fmt


def corpus_files(path: str) -> list[Path]:
    """The corpus files of data.path: the file itself, every supported file under a folder
    (hidden ones skipped; others ignored), or a glob's matches (recursive with **), sorted."""
    if not path:
        raise CorpusError("data.path", path, FILES_ACCEPTED)
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = []
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [
                Path(root, n) for n in names if not n.startswith(".") and file_format(Path(n))
            ]
        if not files:
            seen = sorted({Path(n).suffix or n for _, _, ns in os.walk(p) for n in ns})[:8]
            raise CorpusError(
                "data.path", path, f"a folder that holds corpus files; this one has {seen}"
            )
    elif any(c in path for c in "*?["):
        files = [Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True)]
        files = [f for f in files if f.is_file()]
        if not files:
            raise CorpusError("data.path", path, "a glob that matches files; it matches none")
    else:
        raise CorpusError("data.path", path, FILES_ACCEPTED)
    bad = [str(f) for f in files if file_format(f) is None]
    if bad:
        raise CorpusError("data.path", bad[0], FILES_ACCEPTED)
    return sorted(f.absolute() for f in files)


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _first_record(path: str, size: int, mtime_ns: int) -> dict[str, str] | None:
    """Column -> type name of the file's first record; None when there is none to read
    (an empty file, a JSON array). Cached by path, size and mtime."""
    p = Path(path)
    fmt = file_format(p)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return {f.name: str(f.type) for f in pq.read_schema(p)}
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                break
        else:
            return None
    if fmt == "json" and line.lstrip().startswith("["):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: type(v).__name__ for k, v in record.items()}


TEXT_TYPES = ("str", "string", "large_string", "string_view")


def check_text_column(files: list[Path], text_column: str) -> None:
    """Every JSON and parquet file's first record has text in `text_column`."""
    for f in files:
        if file_format(f) not in ("json", "jsonl", "parquet"):
            continue
        try:
            columns = _first_record(*_stamp(f))
        except Exception as err:  # pyarrow and gzip raise their own kinds on a bad file
            raise CorpusError("data.path", str(f), f"a readable corpus file ({err})") from None
        if columns is None:
            continue
        if not columns:
            raise CorpusError(
                "data.path", str(f), "JSON lines: a JSON object on each line (the first is not)"
            )
        if text_column not in columns:
            raise CorpusError(
                "data.text_column", text_column, f"a column of {f}; it has {sorted(columns)}"
            )
        kind = columns[text_column]
        if kind not in TEXT_TYPES and kind != "NoneType":
            raise CorpusError(
                "data.text_column",
                text_column,
                f"a column of text; in the first record of {f} it holds {kind}",
            )


# ---------------------------------------------------------------------------------------------
# reading documents


def _groups(files: list[Path]) -> list[tuple[str, list[Path]]]:
    """Runs of consecutive files that one load_dataset call reads: the same format, and for
    JSON and parquet the same first-record columns (datasets reads a call as one table)."""
    groups: list[tuple[str, list[Path], object]] = []
    for f in files:
        fmt = file_format(f)
        shape = _first_record(*_stamp(f)) if fmt in ("json", "parquet") else None
        shape = tuple(sorted(shape)) if shape else shape
        if groups and groups[-1][0] == fmt and groups[-1][2] == shape:
            groups[-1][1].append(f)
        else:
            groups.append((fmt, [f], shape))
    return [(fmt, fs) for fmt, fs, _ in groups]


def _texts(values: list, text_column: str, where: list[Path], skipped: list[int]) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, str) and v:
            out.append(v)
        elif v is None or v == "":
            skipped[0] += 1
        else:
            raise CorpusError(
                "data.text_column",
                text_column,
                f"a column of text; a record in {_names(where)} holds {type(v).__name__}",
            )
    return out


def _names(files: list[Path]) -> str:
    shown = ", ".join(str(f) for f in files[:3])
    return shown + (f" (and {len(files) - 3} more)" if len(files) > 3 else "")


def _json_text(line: str, text_column: str, where: list[Path]):
    try:
        record = json.loads(line)
    except ValueError as err:
        raise CorpusError(
            "data.path", _names(where), f"JSON lines: a JSON object on each line ({err})"
        ) from None
    if not isinstance(record, dict):
        raise CorpusError(
            "data.path", _names(where), f"JSON lines: a JSON object on each line, not {line[:40]!r}"
        )
    return record.get(text_column)


def iter_documents(
    files: list[Path],
    text_column: str,
    text_documents: str,
    skipped: list[int] | None = None,
    cache: Path | None = None,
) -> Iterator[list[str]]:
    """Batches of documents, in file order. JSON lines are read as lines by datasets' text
    builder and parsed one by one, so records may differ in their keys (its json builder
    refuses a key that its first chunk lacked). skipped[0] counts empty and null texts;
    datasets keeps its lock files under cache/datasets (default $NBLAB_HOME/cache)."""
    import datasets

    skipped = skipped if skipped is not None else [0]
    hf_cache = str((cache or cache_root()) / "datasets")
    for fmt, group in _groups(files):
        names = [str(f) for f in group]
        if fmt in ("text", "jsonl"):
            sample_by = TEXT_DOCUMENTS[text_documents] if fmt == "text" else "line"
            builder, column, kw = "text", "text", {"sample_by": sample_by}
        elif fmt == "parquet":
            builder, column, kw = "parquet", text_column, {"columns": [text_column]}
        else:
            builder, column, kw = "json", text_column, {}
        try:
            ds = datasets.load_dataset(
                builder, data_files=names, split="train", streaming=True, cache_dir=hf_cache, **kw
            )
            for batch in ds.select_columns([column]).iter(batch_size=BATCH_DOCS):
                values = batch[column]
                if fmt == "jsonl":
                    values = [_json_text(v, text_column, group) for v in values if v.strip()]
                yield _texts(values, text_column, group, skipped)
        except CorpusError:
            raise
        except Exception as err:  # datasets and pyarrow raise many kinds on a bad file
            msg = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise CorpusError(
                "data.path", _names(group), f"files that datasets can read: {msg}"
            ) from err


def split_mask(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """is_val[i] for document i: round(n * val_fraction) documents (1 to n - 1), picked by a
    permutation seeded by `seed`."""
    if n_docs < 2:
        raise CorpusError(
            "data.path",
            f"{n_docs} document{'s' if n_docs != 1 else ''}",
            "a corpus of 2 documents at least: train and val are split by document",
        )
    k = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:k]] = True
    return is_val


# ---------------------------------------------------------------------------------------------
# the token cache


@dataclass(frozen=True)
class CorpusSpec:
    """What the tokens of a corpus depend on."""

    files: tuple[Path, ...]
    text_column: str
    text_documents: str
    tokenizer: str  # data.tokenizer
    val_fraction: float
    split_seed: int

    def key(self) -> str:
        kind, arg = parse_spec(self.tokenizer)
        ident = load_path(arg).fingerprint() if kind == "path" else self.tokenizer
        if kind == "bpe":
            import tokenizers

            ident += f"|tokenizers {tokenizers.__version__}"
        fields = asdict(self)
        fields.update(
            version=CACHE_VERSION,
            files=[_stamp(Path(f)) for f in self.files],
            tokenizer=ident,
            text_documents=self.text_documents
            if any(file_format(Path(f)) == "text" for f in self.files)
            else None,
        )
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def token_cache(spec: CorpusSpec, cache: Path | None = None) -> tuple[Path, bool]:
    """The folder of spec's tokens (meta.json, train.bin, val.bin, tokenizer/), built now if
    missing, and whether this call built it. One process builds; the others block on the
    lock and then reuse its folder."""
    import filelock

    cache = cache or cache_root()
    final = cache / "tokens" / spec.key()
    if (final / "meta.json").is_file():  # renamed into place whole: present means complete
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(final) + ".lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("waiting for another job to tokenize the corpus into %s", final)
        lock.acquire()
    try:
        if (final / "meta.json").is_file():
            return final, False
        for stale in final.parent.glob(final.name + ".tmp-*"):  # left by a job that died
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            _build(spec, tmp, cache)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, True
    finally:
        lock.release()


class _SplitWriter:
    """Appends documents (then eos) to a flat token file, flushing every few MB."""

    def __init__(self, path: Path, dtype, eos_id: int | None) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.dtype, self.eos = dtype, eos_id
        self.parts: list[np.ndarray] = []
        self.pending = self.tokens = self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        self.parts.append(ids)
        if self.eos is not None:
            self.parts.append(np.array([self.eos]))
        self.pending += len(ids) + 1
        self.documents += 1
        if self.pending > 1 << 22:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            block = np.concatenate(self.parts).astype(self.dtype)
            block.tofile(self.file)
            self.tokens += len(block)
        self.parts, self.pending = [], 0

    def close(self) -> None:
        self.flush()
        self.file.close()


def _build(spec: CorpusSpec, out: Path, cache: Path) -> None:
    start = time.perf_counter()
    files = list(spec.files)
    log.info("tokenizing %d corpus file(s) with %s into %s", len(files), spec.tokenizer, out)
    kind, arg = parse_spec(spec.tokenizer)

    def documents(skipped=None):
        return iter_documents(files, spec.text_column, spec.text_documents, skipped, cache)

    # pass 1: count the documents; hash their text (the BPE cache key); collect characters
    n_docs, content, chars = 0, hashlib.sha256(), set()
    for batch in documents():
        for doc in batch:
            raw = doc.encode("utf-8")
            content.update(len(raw).to_bytes(8, "little") + raw)
            if kind == "char":
                chars.update(doc)
        n_docs += len(batch)
    is_val = split_mask(n_docs, spec.val_fraction, spec.split_seed)
    seconds = {"read": time.perf_counter() - start}

    def train_batches():
        i = 0
        for batch in documents():
            yield [d for j, d in enumerate(batch, i) if not is_val[j]]
            i += len(batch)

    if kind == "char":
        tok = CharTokenizer("".join(sorted(chars)), eot=True)
    elif kind == "byte":
        tok = ByteTokenizer(eot=True)
    elif kind == "bpe":
        split = f"{content.hexdigest()}|{spec.val_fraction}|{spec.split_seed}"
        tok = train_bpe(train_batches, arg, hashlib.sha256(split.encode()).hexdigest(), cache)
    else:
        tok = load_path(arg)
    vocab = max(tok.vocab_size, arg if kind == "bpe" else 0)
    seconds["tokenizer"] = time.perf_counter() - start - seconds["read"]
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32

    # pass 2: tokenize into the two split files
    writers = {
        split: _SplitWriter(out / f"{split}.bin", dtype, tok.eos_id) for split in ("train", "val")
    }
    skipped, i = [0], 0
    for batch in documents(skipped):
        for j, ids in enumerate(tok.encode_arrays(batch), i):
            writers["val" if is_val[j] else "train"].add(ids)
        i += len(batch)
    for w in writers.values():
        w.close()
    if i != n_docs:
        raise RuntimeError(f"the corpus changed while it was read: {n_docs} then {i} documents")
    for split, w in writers.items():
        if w.tokens < 2:
            raise CorpusError(
                "data.path", _names(files), f"documents that give tokens; {split} has {w.tokens}"
            )
    tok.save(out / "tokenizer")
    seconds["encode"] = time.perf_counter() - start - seconds["read"] - seconds["tokenizer"]
    meta = {
        "version": CACHE_VERSION,
        "spec": {**asdict(spec), "files": [str(f) for f in files]},
        "tokenizer": {"kind": kind, "vocab_size": vocab, "eos_id": tok.eos_id},
        "chars": tok.chars if kind == "char" else None,
        "dtype": np.dtype(dtype).name,
        "documents_skipped": skipped[0],
        "corpus_sha256": content.hexdigest(),
        "seconds": round(time.perf_counter() - start, 3),
        # pass 1 (read, count, hash), the tokenizer (bpe: training), pass 2 (encode, write)
        "seconds_by_step": {k: round(v, 3) for k, v in seconds.items()},
        **{s: {"documents": w.documents, "tokens": w.tokens} for s, w in writers.items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "tokenized %d documents into %d train and %d val tokens in %.1f s",
        n_docs,
        meta["train"]["tokens"],
        meta["val"]["tokens"],
        meta["seconds"],
    )


# ---------------------------------------------------------------------------------------------
# the dataset


class CorpusDataset(Tokenized):
    """A cached corpus. `tokens[split]` is the split's token file as a read-only np.memmap
    (nothing is read until it is indexed). get_batch takes random windows of seq_len + 1
    tokens and reads each with one pread from that file: the bytes come through the page
    cache that every job shares, and none stay mapped in this process. (Indexing the memmap
    instead maps the kernel's fault-around and readahead pages, ~36 KB a window, into every
    job's resident memory: a long run's RSS would grow to the whole token file.)"""

    name = "files"

    def __init__(self, folder: Path, built: bool = False) -> None:
        self.folder, self.built = Path(folder), built
        self.meta = json.loads((self.folder / "meta.json").read_text())
        kind = self.meta["tokenizer"]["kind"]
        if kind == "char":
            self.tokenizer = CharTokenizer(self.meta["chars"], eot=True)
        elif kind == "byte":
            self.tokenizer = ByteTokenizer(eot=True)
        else:  # the copy saved with the tokens, and the eos they were built with
            saved = load_path(self.folder / "tokenizer")
            eos_id = self.meta["tokenizer"]["eos_id"]
            eos = None if eos_id is None else saved.tok.id_to_token(eos_id)
            self.tokenizer = HFTokenizer(saved.tok, kind, eos, saved.source)
        self.vocab_size = self.meta["tokenizer"]["vocab_size"]
        self.tokens = {
            split: np.memmap(self.folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
            for split in ("train", "val")
        }

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from nblab.train.data import window_starts

        where = f"the corpus in {self.folder}"
        starts = window_starts(split, batch_size, seq_len, generator, self.tokens, where)
        data = self.tokens[split]
        item = data.dtype.itemsize
        with open(data.filename, "rb") as f:
            rows = [
                np.frombuffer(os.pread(f.fileno(), (seq_len + 1) * item, s * item), data.dtype)
                for s in starts.tolist()
            ]
        windows = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # x (B, T), y (B, T)

    def describe(self) -> str:
        m, spec = self.meta, self.meta["spec"]
        files = spec["files"]
        where = (
            files[0] if len(files) == 1 else f"{len(files)} files under {os.path.commonpath(files)}"
        )
        eos = self.tokenizer.eos_id
        return (
            f"files: {where}, {spec['tokenizer']} tokens (vocab {self.vocab_size}, "
            f"end-of-text id {eos} after each document), train {m['train']['documents']:,} "
            f"documents / {m['train']['tokens']:,} tokens, val {m['val']['documents']:,} / "
            f"{m['val']['tokens']:,} (split by document, seed {spec['split_seed']}), "
            f"cached in {self.folder}"
        )
