import re
import sys

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from nblab.models import build_model as build_from_section
from nblab.train.data import (
    DATASETS,
    AdditionDataset,
    MissingDependencyError,
    build_dataset,
    exact_match_accuracy,
    pydoc_text,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pydoc():
    return build_dataset("pydoc")


@pytest.fixture(scope="module")
def addition():
    return build_dataset("addition", digits=3)


# --- pydoc and the token-stream datasets ----------------------------------------------------


def test_pydoc_vocab_is_the_sorted_chars_of_the_whole_text(pydoc):
    text = pydoc_text()
    assert 400_000 < len(text) < 550_000
    assert pydoc.vocab_size == len(set(text))
    assert pydoc.decode(list(range(pydoc.vocab_size))) == "".join(sorted(set(text)))


def test_pydoc_val_is_the_last_tenth_and_train_the_rest(pydoc):
    text = pydoc_text()
    n_train = int(len(text) * 0.9)
    assert pydoc.decode(pydoc.tokens["train"].tolist()) == text[:n_train]
    assert pydoc.decode(pydoc.tokens["val"].tolist()) == text[n_train:]


def test_stream_batches_come_from_their_own_split(pydoc):
    text = pydoc_text()
    n_train = int(len(text) * 0.9)
    train_text, val_text = text[:n_train], text[n_train:]
    x, y = pydoc.get_batch("val", 8, 64, gen(0))
    for row in x.tolist():
        assert pydoc.decode(row) in val_text
    x, _ = pydoc.get_batch("train", 8, 64, gen(0))
    for row in x.tolist():
        assert pydoc.decode(row) in train_text


def test_stream_batch_shapes_dtype_and_targets_are_next_tokens(pydoc):
    x, y = pydoc.get_batch("train", 4, 32, gen(1))
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert (y >= 0).all()  # nothing masked in a plain text stream


@pytest.mark.parametrize("name", ["pydoc", "addition"])
def test_batches_are_deterministic_per_generator_seed(name, pydoc, addition):
    ds = {"pydoc": pydoc, "addition": addition}[name]
    a = ds.get_batch("train", 4, 64, gen(7))
    b = ds.get_batch("train", 4, 64, gen(7))
    c = ds.get_batch("train", 4, 64, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_one_generator_gives_a_fresh_batch_each_call(pydoc):
    g = gen(0)
    first, second = pydoc.get_batch("train", 4, 32, g)[0], pydoc.get_batch("train", 4, 32, g)[0]
    assert not torch.equal(first, second)


_PYDOC_CHARS = build_dataset("pydoc")
_PYDOC_BYTES = build_dataset("pydoc", tokenizer="byte")


@given(st.text(alphabet=st.sampled_from(sorted(set(pydoc_text()))), max_size=200))
@settings(max_examples=50, deadline=None)
def test_char_roundtrip_over_the_pydoc_vocabulary(s):
    ds = _PYDOC_CHARS
    assert ds.decode(ds.encode(s)) == s


@given(st.text(max_size=200))
@settings(max_examples=50, deadline=None)
def test_byte_roundtrip_for_any_unicode_text(s):
    ds = _PYDOC_BYTES
    ids = ds.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert ds.decode(ids) == s


def test_char_encode_of_an_unknown_character_names_it(pydoc):
    with pytest.raises(ValueError, match=r"character '☃' is not in this char vocabulary"):
        pydoc.encode("snow ☃")


# --- text -----------------------------------------------------------------------------------

TEXT = "héllo wörld, 日本\n" * 40


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_text_char_vocab_comes_from_the_file(text_file):
    ds = build_dataset("text", path=text_file)
    assert ds.vocab_size == len(set(TEXT))
    assert ds.decode(ds.encode("wörld 日本")) == "wörld 日本"
    n_train = int(len(TEXT) * 0.9)
    assert ds.decode(ds.tokens["val"].tolist()) == TEXT[n_train:]
    x, y = ds.get_batch("train", 2, 16, gen(0))
    assert x.shape == (2, 16) and int(x.max()) < ds.vocab_size


def test_text_byte_tokens_are_the_files_utf8_bytes(text_file):
    ds = build_dataset("text", path=str(text_file), tokenizer="byte", val_fraction=0.25)
    raw = TEXT.encode("utf-8")
    n_train = int(len(raw) * 0.75)
    assert ds.vocab_size == 256
    assert bytes(ds.tokens["train"].tolist()) == raw[:n_train]
    assert bytes(ds.tokens["val"].tolist()) == raw[n_train:]


def test_text_shorthand_equals_the_path_keyword(text_file):
    a = build_dataset(f"text:{text_file}")
    b = build_dataset("text", path=text_file)
    assert torch.equal(a.tokens["train"], b.tokens["train"])
    assert a.describe() == b.describe()
    assert "text: char-level" in a.describe()


def test_text_that_is_not_utf8_needs_the_byte_tokenizer(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait, ".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=r"not valid UTF-8 at byte 3; .*tokenizer='byte'"):
        build_dataset("text", path=p)
    assert build_dataset("text", path=p, tokenizer="byte").vocab_size == 256


def test_seq_len_longer_than_a_split_names_both_lengths(text_file):
    ds = build_dataset("text", path=text_file, tokenizer="byte")
    n_val = len(ds.tokens["val"])
    with pytest.raises(ValueError, match=rf"seq_len=1000 needs 1001 tokens, .*'val'.* has {n_val}"):
        ds.get_batch("val", 1, 1000, gen(0))


# --- addition -------------------------------------------------------------------------------

PROBLEM = re.compile(r"(\d{3})\+(\d{3})=(\d+)\$")


def parse_row(text: str) -> list[re.Match]:
    matches = list(PROBLEM.finditer(text))
    assert "".join(m.group(0) for m in matches) == text.rstrip(".")  # nothing else in a row
    return matches


def test_addition_rows_are_correct_reversed_sums(addition):
    x, _ = addition.get_batch("train", 8, 64, gen(0))
    n = 0
    for row in x.tolist():
        for m in parse_row(addition.decode(row)):
            a, b, answer = int(m.group(1)), int(m.group(2)), m.group(3)
            assert int(answer[::-1]) == a + b
            assert answer == str(a + b)[::-1]  # no padding in the answer
            n += 1
    assert n == 8 * (65 // 13)  # per row: (seq_len + 1) // (3 * digits + 4) problems


def test_addition_targets_are_the_answer_tokens_only(addition):
    x, y = addition.get_batch("val", 8, 64, gen(3))
    for xr, yr in zip(x.tolist(), y.tolist(), strict=True):
        text = addition.decode(xr)
        answer_pos = set()
        for m in parse_row(text):
            answer_pos |= set(range(m.start(3), m.end(0)))  # reversed digits and "$"
        for j in range(len(xr) - 1):  # y[j] is the target for token j + 1
            if j + 1 in answer_pos:
                assert yr[j] == xr[j + 1]
            else:
                assert yr[j] == -100, (text, j)
    masked = (y == -100).float().mean().item()
    assert 0.5 < masked < 0.8


def test_addition_example_from_the_docs():
    ds = AdditionDataset(digits=3)
    assert ds.prompt(123, 456) + ds.answer(123, 456) == "123+456=975$"
    assert ds.prompt(3, 4) + ds.answer(3, 4) == "003+004=7$"
    assert ds.prompt(999, 999) + ds.answer(999, 999) == "999+999=8991$"


def test_addition_train_and_val_problem_sets_are_disjoint(addition):
    def pairs(split: str) -> set[tuple[int, int]]:
        problems = addition.sample_problems(split, 4000, gen(11))
        return {(min(a, b), max(a, b)) for a, b in problems}

    train, val = pairs("train"), pairs("val")
    assert len(train) > 3000 and len(val) > 3000
    assert train.isdisjoint(val)
    assert all(addition.is_val(b, a) for a, b in val)  # b+a is val whenever a+b is
    share = sum(addition.is_val(a, b) for a in range(100) for b in range(100)) / 10_000
    assert 0.08 < share < 0.12


def test_addition_split_depends_on_the_seed():
    a, b = AdditionDataset(seed=0), AdditionDataset(seed=1)
    grid = [(x, y) for x in range(50) for y in range(50)]
    assert [a.is_val(*p) for p in grid] != [b.is_val(*p) for p in grid]


def test_addition_with_digits_one_packs_and_parses():
    ds = build_dataset("addition", digits=1, val_fraction=0.3, seed=2)
    x, y = ds.get_batch("train", 2, 20, gen(0))
    text = ds.decode(x[0].tolist())
    for m in re.finditer(r"(\d)\+(\d)=(\d+)\$", text):
        assert int(m.group(3)[::-1]) == int(m.group(1)) + int(m.group(2))
    assert (y != -100).any()


class Oracle(nn.Module):
    """Answers every prompt right, except where `wrong(a, b)`; `end` off drops the END.
    Its forward puts all the probability of the last position on the answer's next token."""

    def __init__(self, ds: AdditionDataset, wrong=lambda a, b: False, end: bool = True):
        super().__init__()
        self.ds, self.wrong, self.end = ds, wrong, end

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.ds.vocab_size)
        for row, ids in enumerate(idx.tolist()):
            prompt = self.ds.decode(ids[: self.ds.prompt_len])
            a, b = map(int, prompt[:-1].split("+"))
            answer = self.ds.answer(a, b + self.wrong(a, b))
            answer = answer if self.end else answer[:-1]
            done = T - self.ds.prompt_len
            nxt = answer[done] if done < len(answer) else "."
            logits[row, -1, self.ds.encode(nxt)[0]] = 1.0
        return logits


def test_exact_match_grades_whole_answers(addition):
    assert exact_match_accuracy(Oracle(addition), addition, 200, "cpu", batch_size=64) == 1.0
    assert exact_match_accuracy(Oracle(addition, end=False), addition, 50, "cpu") == 0.0
    half = Oracle(addition, wrong=lambda a, b: a > b)
    problems = addition.sample_problems("val", 200, gen(addition.seed))
    expected = sum(a <= b for a, b in problems) / 200
    assert exact_match_accuracy(half, addition, 200, "cpu", batch_size=64) == expected


def test_exact_match_runs_a_real_model_and_restores_its_mode(addition):
    torch.manual_seed(0)
    section = {"name": "gpt", "flavour": "debug"}
    model = build_from_section(section, vocab_size=addition.vocab_size, max_seq_len=64)
    model.train()
    acc = exact_match_accuracy(model, addition, 20, "cpu")
    assert acc == 0.0  # an untrained model does not add
    assert model.training


def test_exact_match_refuses_other_datasets(pydoc):
    with pytest.raises(ValueError, match=r"grades AdditionDataset only"):
        exact_match_accuracy(Oracle(AdditionDataset()), pydoc, 10, "cpu")


def test_addition_seq_len_too_short_names_the_minimum(addition):
    with pytest.raises(ValueError, match=r"seq_len=10 is too short .* at least 12"):
        addition.get_batch("train", 1, 10, gen(0))
    x, _ = addition.get_batch("train", 1, 12, gen(0))
    assert len(parse_row(addition.decode(x[0].tolist()))) == 1


# --- hf -------------------------------------------------------------------------------------


def test_hf_without_the_datasets_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingDependencyError, match=r"pip install datasets") as info:
        build_dataset("hf", path=tmp_path)
    assert isinstance(info.value, ImportError)


def test_hf_loads_a_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = ["first document", "second one", "third"]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "single"))
    ds = build_dataset("hf", path=tmp_path / "single", val_fraction=0.2)
    whole = "\n".join(docs)
    n_train = int(len(whole) * 0.8)
    assert ds.decode(ds.tokens["train"].tolist()) == whole[:n_train]
    split = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"body": ["abc", "def"]}),
        validation=datasets.Dataset.from_dict({"body": ["fed"]}),
    )
    split.save_to_disk(str(tmp_path / "dict"))
    ds = build_dataset(f"hf:{tmp_path / 'dict'}", text_column="body")
    assert ds.decode(ds.tokens["val"].tolist()) == "fed"
    with pytest.raises(ValueError, match=r"text_column='text' is not a column .*\['body'\]"):
        build_dataset("hf", path=tmp_path / "dict")


# --- the registry refuses bad input by name -------------------------------------------------


def test_registry_holds_the_six_datasets():
    assert sorted(DATASETS) == ["addition", "files", "hf", "instruct", "pydoc", "text"]


def test_an_empty_path_counts_as_none():
    assert build_dataset("pydoc", path="").vocab_size == _PYDOC_CHARS.vocab_size
    with pytest.raises(ValueError, match=r"dataset 'text' needs path=.*got path=None"):
        build_dataset("text", path="")


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        (
            "wikitext",
            {},
            r"name='wikitext' is not registered; accepted: \['addition', 'files', 'hf'",
        ),
        ("pydoc", {"tokenizer": "bpe"}, r"tokenizer='bpe' .* accepted: \['byte', 'char'\]"),
        ("pydoc", {"val_fraction": 0}, r"val_fraction=0 must be strictly between 0 and 1"),
        ("pydoc", {"val_fraction": 1.5}, r"val_fraction=1.5 must be strictly between 0 and 1"),
        ("pydoc", {"path": "x.txt"}, r"path='x.txt': dataset 'pydoc' .* takes no path"),
        ("pydoc", {"digits": 3}, r"digits=3 is not an option of dataset 'pydoc'; accepted: \[\]"),
        ("addition", {"digits": 0}, r"digits=0 must be an integer from 1 to 18"),
        ("addition", {"digitz": 2}, r"digitz=2 is not an option .* accepted: \['digits'\]"),
        ("addition", {"tokenizer": "byte"}, r"tokenizer='byte': .* accepted: \['char'\]"),
        ("text", {}, r"dataset 'text' needs path=.*got path=None"),
        ("text", {"path": "/no/such.txt"}, r"path='/no/such.txt' for dataset 'text': no such file"),
        ("text:/a.txt", {"path": "/b.txt"}, r"path='/b.txt' disagrees with the path '/a.txt'"),
    ],
)
def test_bad_dataset_inputs_name_the_field_and_accepted_values(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_dataset(name, **kwargs)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("test", 2, 8), r"split='test' is not a split; accepted: \['train', 'val'\]"),
        (("train", 0, 8), r"batch_size=0 must be a positive integer"),
        (("train", 2, -1), r"seq_len=-1 must be a positive integer"),
    ],
)
def test_bad_batch_arguments_are_named(args, pattern, pydoc, addition):
    for ds in (pydoc, addition):
        with pytest.raises(ValueError, match=pattern):
            ds.get_batch(*args, gen(0))
