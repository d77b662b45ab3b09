"""Local corpora (data.name = "files"): every format reads its documents, the split is by
document and deterministic, the token cache is built once (by one of two processes starting
together) and memory-mapped, and every bad input is a RecipeError naming its field before
anything is written to the run store."""

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nblab.cli import main as cli
from nblab.recipe import Recipe, RecipeError
from nblab.runs import RunStore
from nblab.train import corpus
from nblab.train.data import (
    build_data,
    data_problems,
    save_tokenizer,
    tokenizer_vocab_size,
)
from nblab.train.tokenizer import EOT

DOCS = [f"document {i}: {'lorem ipsum dolor ' * (i % 5 + 1)}the end {i}" for i in range(40)]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"text": d, "id": i} for i, d in enumerate(DOCS)])


def documents(path, **kw) -> list[str]:
    files = corpus.corpus_files(str(path))
    args = {"text_column": "text", "text_documents": "paragraph", **kw}
    return [d for batch in corpus.iter_documents(files, **args) for d in batch]


def recipe(*overrides) -> Recipe:
    return Recipe.preset("gpt-debug").with_overrides(list(overrides))


# --- formats, folders and globs -------------------------------------------------------------


def test_jsonl_records_may_differ_in_keys_and_null_texts_are_skipped(tmp_path):
    records = [{"text": "a", "id": 1}, {"text": None}, {"text": "b", "meta": {"x": 1}}, {"id": 3}]
    write_jsonl(tmp_path / "x.jsonl", records)
    assert documents(tmp_path / "x.jsonl") == ["a", "b"]


def test_parquet_json_and_gzip_files_read_their_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["p1", "p2"], "n": [1, 2]}), tmp_path / "t.parquet")
    assert documents(tmp_path / "t.parquet", text_column="body") == ["p1", "p2"]
    (tmp_path / "arr.json").write_text(json.dumps([{"body": "j1"}, {"body": "j2"}]))
    assert documents(tmp_path / "arr.json", text_column="body") == ["j1", "j2"]
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "g1"}) + "\n")
    assert documents(tmp_path / "z.jsonl.gz", text_column="body") == ["g1"]


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("paragraph", ["one\nstill one", "two", "three"]),
        ("line", ["one", "still one", "two", "three"]),
        ("file", ["one\nstill one\n\ntwo\n\nthree"]),
    ],
)
def test_text_files_are_cut_into_documents_by_text_documents(tmp_path, unit, expected):
    (tmp_path / "t.txt").write_text("one\nstill one\n\ntwo\n\nthree")
    assert documents(tmp_path / "t.txt", text_documents=unit) == expected


def test_a_folder_reads_its_corpus_files_sorted_and_a_glob_its_matches(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / ".hidden").mkdir()
    write_jsonl(tmp_path / "c" / "b.jsonl", [{"text": "from b"}])
    write_jsonl(tmp_path / "c" / "sub" / "a.jsonl", [{"text": "from sub/a"}])
    (tmp_path / "c" / "a.txt").write_text("from a.txt")
    write_jsonl(tmp_path / "c" / ".hidden" / "x.jsonl", [{"text": "hidden"}])
    (tmp_path / "c" / "README").write_text("not a corpus file")
    assert documents(tmp_path / "c") == ["from a.txt", "from b", "from sub/a"]
    assert documents(f"{tmp_path}/c/**/*.jsonl") == ["from b", "from sub/a"]


# --- the split and the token cache ------------------------------------------------------------


def split_docs(ds, split) -> list[str]:
    """The documents of a split, read back from its tokens (each ends with EOT)."""
    text = ds.decode(np.asarray(ds.tokens[split]).tolist())
    assert text.endswith(EOT)
    return text.split(EOT)[:-1]


def test_the_split_is_by_document_exact_and_in_corpus_order(jsonl):
    ds = build_data(
        recipe(f"data.name=files:{jsonl}", "data.tokenizer=byte", "data.val_fraction=0.25")
    )
    train, val = split_docs(ds, "train"), split_docs(ds, "val")
    assert len(val) == 10 and len(train) == 30  # round(40 * 0.25) whole documents
    assert sorted(train + val) == sorted(DOCS)
    assert train == [d for d in DOCS if d in train] and val == [d for d in DOCS if d in val]


def test_the_split_follows_split_seed_not_train_seed(jsonl):
    base = [f"data.name=files:{jsonl}", "data.tokenizer=byte"]
    a = build_data(recipe(*base))
    b = build_data(recipe(*base, "train.seed=5"))  # another training seed: the same cache
    c = build_data(recipe(*base, "data.split_seed=1"))
    assert b.folder == a.folder and not b.built
    assert split_docs(b, "val") == split_docs(a, "val")
    assert c.folder != a.folder and split_docs(c, "val") != split_docs(a, "val")


def test_tokens_are_built_once_memory_mapped_and_rebuilt_when_a_file_changes(jsonl):
    r = recipe(f"data.name=files:{jsonl}", "data.tokenizer=byte")
    first, again = build_data(r), build_data(r)
    assert first.built and not again.built and again.folder == first.folder
    assert isinstance(again.tokens["train"], np.memmap)
    assert again.tokens["train"].dtype == np.uint16  # vocab 257
    st = jsonl.stat()
    os.utime(jsonl, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = build_data(r)
    assert changed.built and changed.folder != first.folder


def test_get_batch_takes_windows_of_one_split(jsonl):
    ds = build_data(recipe(f"data.name=files:{jsonl}", "data.tokenizer=byte"))
    x, y = ds.get_batch("val", 4, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    val = bytes(np.asarray(ds.tokens["val"]).astype(np.uint8))  # EOT (256) wraps, harmless
    for row, nxt in zip(x.tolist(), y[:, -1].tolist(), strict=True):
        assert bytes(b % 256 for b in row + [nxt]) in val
    starts = torch.randint(
        0, len(ds.tokens["val"]) - 32, (4,), generator=torch.Generator().manual_seed(0)
    )
    for row, s in zip(x.tolist(), starts.tolist(), strict=True):  # the memmap's own windows
        assert row == ds.tokens["val"][s : s + 32].tolist()
    again = ds.get_batch("val", 4, 32, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x)
    with pytest.raises(ValueError, match=r"seq_len=100000 needs 100001 tokens, but split 'val'"):
        ds.get_batch("val", 1, 100_000, torch.Generator())


def test_bpe_corpus_has_vocab_n_and_saves_its_tokenizer(jsonl, tmp_path, home):
    r = recipe(f"data.name=files:{jsonl}", "data.tokenizer=bpe:300")
    ds = build_data(r)
    assert ds.vocab_size == tokenizer_vocab_size(r.data) == 300
    assert ds.tokenizer.eos_id == 0 and ds.tokenizer.vocab_size <= 300
    assert ds.decode(ds.encode(DOCS[3])) == DOCS[3]
    assert len(list((home / "cache" / "tokenizers").iterdir())) == 1  # cached by content
    saved = save_tokenizer(ds, tmp_path / "run")
    assert saved == tmp_path / "run" / "tokenizer"
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


CHILD = textwrap.dedent(
    """
    import hashlib, json, logging, sys, time
    from pathlib import Path
    from nblab.train import corpus
    from nblab.train.data import build_dataset
    from nblab.train.tokenizer import train_bpe

    logging.basicConfig(level=logging.INFO)
    real = corpus._build
    def slow_build(*args):  # hold the lock long enough for the other process to find it
        time.sleep(1.0)
        return real(*args)
    corpus._build = slow_build
    path, go, cache, own = sys.argv[1:]
    while not Path(go).exists():
        time.sleep(0.005)
    ds = build_dataset("files", path=path, tokenizer="bpe:300", cache_dir=cache)
    docs = lambda: iter([[f"word{i} " * 3 for i in range(200)]])
    bpe = train_bpe(docs, 300, "same text", Path(own))  # each process its own cache
    print(json.dumps({
        "built": ds.built, "folder": str(ds.folder),
        "train": ds.tokens["train"][:200].tolist(),
        "bpe": hashlib.sha256(bpe.tok.to_str().encode()).hexdigest(),
    }))
    """
)


def test_two_processes_starting_together_tokenize_once(jsonl, tmp_path):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(jsonl),
                str(go),
                str(tmp_path / "cache"),
                str(tmp_path / f"own{i}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    time.sleep(0.2)
    go.touch()  # both are past their imports or nearly: they start within milliseconds
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["folder"] == results[1]["folder"]
    assert results[0]["train"] == results[1]["train"]
    waiter = next(err for (_, err), r in zip(outs, results, strict=True) if not r["built"])
    assert "waiting for another job to tokenize the corpus" in waiter
    assert results[0]["bpe"] == results[1]["bpe"]  # BPE training: the same in two processes
    tokens = list((tmp_path / "cache" / "tokens").iterdir())
    assert [p.name for p in tokens if p.is_dir()] == [Path(results[0]["folder"]).name]


# --- bad input: a RecipeError naming the field, before any job -------------------------------


@pytest.fixture
def bad_inputs(tmp_path, jsonl):
    write_jsonl(tmp_path / "body.jsonl", [{"body": "x", "id": 1}])
    write_jsonl(tmp_path / "num.jsonl", [{"text": 3}])
    write_jsonl(tmp_path / "strings.jsonl", ["just a string"])
    (tmp_path / "broken.json").write_text("{not a tokenizer")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    return {
        "missing file": (
            [f"data.name=files:{tmp_path}/nope.jsonl"],
            "data.path",
            "an existing local file, folder or glob",
        ),
        "missing folder": (
            [f"data.name=files:{tmp_path}/nope/"],
            "data.path",
            "never downloads",
        ),
        "hub name for files": (
            ["data.name=files:HuggingFaceFW/fineweb"],
            "data.path",
            "a hub dataset name is refused",
        ),
        "hub name for hf": (["data.name=hf:roneneldan/TinyStories"], "data.path", "save_to_disk"),
        "no text column": (
            [f"data.name=files:{tmp_path}/body.jsonl"],
            "data.text_column",
            "it has ['body', 'id']",
        ),
        "a column that is not text": (
            [f"data.name=files:{tmp_path}/num.jsonl"],
            "data.text_column",
            "holds int",
        ),
        "JSON lines that are not objects": (
            [f"data.name=files:{tmp_path}/strings.jsonl"],
            "data.path",
            "a JSON object on each line",
        ),
        "no corpus files in the folder": (
            [f"data.name=files:{tmp_path}/empty"],
            "data.path",
            "this one has ['.csv']",
        ),
        "bad bpe:N": (
            [f"data.name=files:{jsonl}", "data.tokenizer=bpe:100"],
            "data.tokenizer",
            "bpe:N",
        ),
        "hub tokenizer": (
            [f"data.name=files:{jsonl}", "data.tokenizer=Qwen/Qwen2-0.5B"],
            "data.tokenizer",
            "hub names are refused",
        ),
        "unreadable tokenizer": (
            [f"data.name=files:{jsonl}", f"data.tokenizer={tmp_path}/broken.json"],
            "data.tokenizer",
            "failed to load",
        ),
        "bpe on a stream": (["data.tokenizer=bpe:300"], "data.tokenizer", "data.name='files'"),
    }


CASES = [
    "missing file",
    "missing folder",
    "hub name for files",
    "hub name for hf",
    "no text column",
    "a column that is not text",
    "JSON lines that are not objects",
    "no corpus files in the folder",
    "bad bpe:N",
    "hub tokenizer",
    "unreadable tokenizer",
    "bpe on a stream",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_a_recipe_error_naming_the_field(case, bad_inputs):
    overrides, field, accepted = bad_inputs[case]
    with pytest.raises(RecipeError) as err:
        recipe(*overrides)
    assert [p[0] for p in err.value.problems] == [field]
    assert accepted in err.value.problems[0][2]


def test_a_bad_data_recipe_starts_no_run_and_writes_nothing(tmp_path, bad_inputs, home, capsys):
    overrides, _, _ = bad_inputs["no text column"]
    toml = tmp_path / "bad.toml"
    toml.write_text(f'[data]\nname = "files"\npath = "{tmp_path}/body.jsonl"\n')
    assert cli(["run", str(toml)]) == 2
    assert "data.text_column: 'text' -> a column of" in capsys.readouterr().err
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'name = "s"\nbase = "gpt-debug"\n[set]\n"data.name" = "files"\n'
        f'"data.path" = "{tmp_path}/docs.jsonl"\n[grid]\n"data.tokenizer" = ["bpe:300", "bpe:9"]\n'
    )
    assert cli(["sweep", str(sweep)]) == 2
    assert "data.tokenizer: 'bpe:9'" in capsys.readouterr().err
    assert RunStore(home).runs().empty
    assert list((home / "runs").iterdir()) == []
    assert not (home / "cache" / "tokens").exists()  # nothing tokenized either


def test_checks_read_only_the_first_record_and_cache_it(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + "not json at all\n" * 1000)
    r = recipe(f"data.name=files:{path}")  # valid: only the first record is read
    corpus._first_record.cache_clear()
    assert data_problems(r) == [] and data_problems(r) == []
    info = corpus._first_record.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_relative_paths_are_made_absolute_for_jobs_in_other_folders(jsonl, monkeypatch):
    monkeypatch.chdir(jsonl.parent)
    r = recipe(f"data.name=files:{jsonl.name}")
    assert r.data.path == str(jsonl)
    monkeypatch.chdir("/")  # a job runs in its run folder
    assert Recipe.from_toml(r.to_toml()).data.path == str(jsonl)


def test_a_run_trains_on_a_local_corpus(jsonl, home):
    from nblab.train.trainer import train

    r = recipe(
        f"data.name=files:{jsonl}", "data.tokenizer=bpe:300", "train.steps=3", "eval.interval=3"
    )
    result = train(r, store=RunStore(home))
    assert result.status == "succeeded" and result.step == 3
    assert np.isfinite(result.metrics["val_loss"])
