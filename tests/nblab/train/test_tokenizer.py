"""Tokenizers: bpe:N is deterministic, cached and round-trips text; every kind saves files that
transformers' AutoTokenizer loads offline and that give the same ids; bad specs are named."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nblab.train.tokenizer import (
    EOT,
    ByteTokenizer,
    CharTokenizer,
    TokenizerError,
    load_path,
    parse_spec,
    train_bpe,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into pieces; pieces become ids.",
    "def f(x):\n    return x * 2  # a little code\n",
    "Ünïcödé, 日本語 and emoji 🙂 are bytes too.",
] * 8


def batches():
    yield DOCS[:16]
    yield DOCS[16:]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(batches, 320, "docs-v1", tmp_path_factory.mktemp("cache"))


def test_bpe_has_the_vocab_asked_for_and_eot_first(bpe):
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 320 and bpe.tok.get_vocab_size() == 320
    assert bpe.eos_id == 0 and bpe.decode([0]) == EOT
    assert len(bpe.encode(DOCS[0])) < len(DOCS[0]) * 0.6  # merges learned from the corpus


def test_bpe_training_is_deterministic(bpe, tmp_path):
    again = train_bpe(batches, 320, "docs-v1", tmp_path)  # a fresh cache: trained again
    assert again.tok.to_str() == bpe.tok.to_str()


def test_bpe_is_cached_by_content_hash(tmp_path):
    first = train_bpe(batches, 300, "hash-a", tmp_path)

    def must_not_train():
        raise AssertionError("trained again despite the cache")

    cached = train_bpe(must_not_train, 300, "hash-a", tmp_path)
    assert cached.tok.to_str() == first.tok.to_str()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    with pytest.raises(AssertionError, match="trained again"):  # other text: another key
        train_bpe(must_not_train, 300, "hash-b", tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_encode_arrays_equal_encode(bpe):
    char = CharTokenizer("".join(sorted(set("".join(DOCS)))), eot=True)
    for tok in (bpe, char, ByteTokenizer(eot=True)):
        arrays = tok.encode_arrays(DOCS[:4])
        assert [a.tolist() for a in arrays] == [tok.encode(d) for d in DOCS[:4]]


def test_char_and_byte_end_of_text_is_the_last_id():
    char = CharTokenizer("ab", eot=True)
    assert (char.vocab_size, char.eos_id) == (3, 2)
    assert char.decode([0, 2, 1]) == f"a{EOT}b"
    byte = ByteTokenizer(eot=True)
    assert (byte.vocab_size, byte.eos_id) == (257, 256)
    assert byte.decode([104, 105, 256, 195, 169]) == f"hi{EOT}é"
    assert (ByteTokenizer().vocab_size, ByteTokenizer().eos_id) == (256, None)
    with pytest.raises(ValueError, match=r"character 'z' is not in this char vocabulary"):
        char.encode_arrays(["abz"])


# --- local tokenizer files and folders ------------------------------------------------------


def test_a_lone_tokenizer_json_finds_its_end_of_text_token(bpe, tmp_path):
    bpe.tok.save(str(tmp_path / "my.json"))
    tok = load_path(tmp_path / "my.json")
    assert tok.kind == "path" and tok.eos_id == 0 and tok.vocab_size == 320
    assert tok.encode(DOCS[2]) == bpe.encode(DOCS[2])


def test_a_tokenizer_folder_takes_eos_from_its_config(bpe, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    bpe.tok.save(str(folder / "tokenizer.json"))
    eos = {"content": bpe.tok.id_to_token(7), "special": True}  # as transformers writes it
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    assert load_path(folder).eos_id == 7


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("bpe:12", r"bpe:N \(N an integer from 257"),
        ("bpe:x", r"bpe:N \(N an integer from 257"),
        ("bpe", r"bpe:N \(N an integer from 257"),
    ],
)
def test_bad_bpe_specs_say_what_is_accepted(spec, pattern):
    with pytest.raises(TokenizerError, match=pattern):
        parse_spec(spec)


def test_unreadable_paths_are_named(tmp_path):
    with pytest.raises(TokenizerError, match=r"never downloads: hub names are refused"):
        load_path("Qwen/Qwen2-0.5B")  # not a local path
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"bad.json' failed to load"):
        load_path(tmp_path / "bad.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match=r"a tokenizer folder that holds tokenizer.json"):
        load_path(tmp_path / "empty")


# --- saved tokenizers load in transformers ----------------------------------------------------


@pytest.fixture(scope="module")
def auto_tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer


def _kinds(bpe, tmp_path):
    folder = tmp_path / "src"
    bpe.save(folder)  # a folder with tokenizer.json and tokenizer_config.json
    return {
        "char": CharTokenizer("".join(sorted(set("".join(DOCS)))), eot=True),
        "char-no-eot": CharTokenizer("".join(sorted(set("".join(DOCS))))),
        "byte": ByteTokenizer(eot=True),
        "bpe": bpe,
        "path": load_path(folder),
    }


@pytest.mark.parametrize("kind", ["char", "char-no-eot", "byte", "bpe", "path"])
def test_saved_tokenizer_gives_the_same_ids_in_transformers(kind, bpe, tmp_path, auto_tokenizer):
    tok = _kinds(bpe, tmp_path)[kind]
    saved = tok.save(tmp_path / "out")
    hf = auto_tokenizer.from_pretrained(str(saved), local_files_only=True)
    for doc in DOCS[:4]:
        ids = hf.encode(doc, add_special_tokens=False)
        assert ids == tok.encode(doc)
        assert hf.decode(ids) == tok.decode(ids) == doc
    assert hf.eos_token_id == tok.eos_id
    assert len(hf) == tok.vocab_size
