"""Tokenizers, named by `data.tokenizer`. Everything is local: nothing is downloaded.

    "char"            one id per character of the corpus (sorted), vocab from the text
    "byte"            UTF-8 bytes, vocab 256
    "bpe:8192"        a byte-level BPE of vocab 8192 trained with Hugging Face `tokenizers`
                      on the train split (train_bpe), cached by a hash of that text
    "/path/tokenizer.json" or "/path/folder"
                      a local Hugging Face tokenizer (the folder holds tokenizer.json)

Every tokenizer has `vocab_size`, `eos_id` (the end-of-text id put between documents, None
when it has none), `encode`, `decode`, `encode_arrays` (many documents at once, as numpy
arrays: what the token cache calls) and `save(directory)`, which writes tokenizer.json and
tokenizer_config.json: `transformers.AutoTokenizer.from_pretrained(directory)` loads them
offline and gives the same ids (`encode(text, add_special_tokens=False)`).

char and byte have an end-of-text id only when a corpus of documents asks for one
(eot=True, data.name="files"): it is the last id, len(chars) or 256, written as EOT.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

EOT = "<|endoftext|>"
BUILTIN = ("char", "byte")
BPE_MIN, BPE_MAX = 257, 2**21  # 256 byte symbols + EOT at least; ids fit uint32 at most
ACCEPTED = (
    f"one of char, byte, bpe:N (N an integer from {BPE_MIN} to {BPE_MAX}), or the path of a "
    f"local tokenizer.json or tokenizer folder (nblab never downloads: hub names are refused)"
)
# what save() copies from a tokenizer folder besides tokenizer.json, when they are there
CONFIG_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# end-of-text tokens to look for when a lone tokenizer.json has no config that names one
EOS_GUESSES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


class TokenizerError(ValueError):
    """A tokenizer spec or file that cannot be used; the message says what would be."""


class Tokenizer(Protocol):
    kind: str  # char | byte | bpe | path
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]: ...

    def save(self, directory: str | os.PathLike) -> Path: ...


class Tokenized:
    """What a dataset built on a tokenizer answers through it (its `tokenizer`)."""

    tokenizer: Tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)


def parse_spec(spec: str) -> tuple[str, int | str | None]:
    """("char", None) | ("byte", None) | ("bpe", N) | ("path", str). Raises TokenizerError
    for a bad bpe:N; any other string is taken as a path (checked by load_path)."""
    if spec in BUILTIN:
        return spec, None
    if spec.startswith("bpe:") or spec == "bpe":
        raw = spec[4:]
        n = int(raw) if raw.isascii() and raw.isdigit() else None
        if n is None or not BPE_MIN <= n <= BPE_MAX:
            raise TokenizerError(ACCEPTED)
        return "bpe", n
    return "path", spec


# ---------------------------------------------------------------------------------------------
# char and byte


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: what tokenizers' ByteLevel maps bytes to."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _write_config(directory: Path, eos: str | None) -> None:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2**31 - 1}
    if eos is not None:
        config["eos_token"] = eos
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


class CharTokenizer:
    """One id per character of a fixed vocabulary (ids follow the order of ``chars``), then
    EOT (id len(chars)) when eot=True."""

    kind = "char"

    def __init__(self, chars: str, eot: bool = False) -> None:
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eos_id = len(chars) if eot else None
        self.vocab_size = len(chars) + eot
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted or not
        self._order = np.argsort(self._codepoints, kind="stable")

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this char vocabulary of {len(self.chars)} "
                f"symbols; use tokenizer='byte' for open-ended text"
            ) from None

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        sorted_cps = self._codepoints[self._order]
        out = []
        for text in texts:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            pos = np.minimum(np.searchsorted(sorted_cps, cps), len(sorted_cps) - 1)
            if len(cps) and (sorted_cps[pos] != cps).any():
                self.encode(text)  # raises, naming the character
            out.append(self._order[pos])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(EOT if i == self.eos_id else self.chars[i] for i in ids)

    def fingerprint(self) -> str:
        return "char:" + hashlib.sha256(f"{self.chars}|{self.eos_id}".encode()).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """A BPE with no merges over the characters (and EOT): the same ids in transformers."""
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HF

        tok = HF(models.BPE(vocab=dict(self.stoi), merges=[]))
        tok.decoder = decoders.Fuse()
        if self.eos_id is not None:
            tok.add_special_tokens([AddedToken(EOT, special=True)])
        return _save_hf(tok, directory, EOT if self.eos_id is not None else None)


class ByteTokenizer:
    """UTF-8 bytes, vocab 256, then EOT (id 256) when eot=True. decode turns a character cut
    by a window edge into U+FFFD."""

    kind = "byte"

    def __init__(self, eot: bool = False) -> None:
        self.eos_id = 256 if eot else None
        self.vocab_size = 256 + eot

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], []
        for i in ids:
            if i == self.eos_id:
                out += [bytes(run).decode("utf-8", errors="replace"), EOT]
                run = []
            else:
                run.append(i)
        return "".join(out) + bytes(run).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return f"byte:{self.eos_id}"

    def save(self, directory: str | os.PathLike) -> Path:
        """A byte-level BPE with no merges: byte b is id b, as tokenizers' ByteLevel maps it."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HF

        vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
        tok = HF(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        if self.eos_id is not None:
            tok.add_special_tokens([AddedToken(EOT, special=True)])
        return _save_hf(tok, directory, EOT if self.eos_id is not None else None)


def _save_hf(tok, directory: str | os.PathLike, eos: str | None, config: bool = True) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config:
        _write_config(directory, eos)
    return directory


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizers: a trained BPE, or a local file / folder


class HFTokenizer:
    """A `tokenizers.Tokenizer` with its end-of-text token. Special tokens are not added on
    encode (documents are joined with eos_id by the caller). kind: "bpe" or "path"."""

    def __init__(self, tok, kind: str, eos: str | None, source: Path | None = None) -> None:
        self.tok, self.kind, self.source = tok, kind, source
        self.eos = eos
        self.eos_id = None if eos is None else tok.token_to_id(eos)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [np.asarray(e.ids, dtype=np.int64) for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        text = self.tok.to_str()
        return f"{self.kind}:" + hashlib.sha256(f"{text}|{self.eos}".encode()).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """tokenizer.json and tokenizer_config.json; a tokenizer folder's own config files
        (chat template, special tokens) are copied as they are."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        folder = self.source if self.source is not None and self.source.is_dir() else None
        for name in CONFIG_FILES if folder is not None else ():
            if (folder / name).is_file():
                shutil.copyfile(folder / name, directory / name)
        has_config = folder is not None and (folder / "tokenizer_config.json").is_file()
        return _save_hf(self.tok, directory, self.eos, config=not has_config)


def _token_name(value) -> str | None:
    """A token as tokenizer_config.json writes it: "</s>" or {"content": "</s>", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _configured_eos(folder: Path, tok) -> str | None:
    """The eos token named by a tokenizer folder's config files, else a well-known one."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            eos = _token_name(json.loads((folder / name).read_text()).get("eos_token"))
        except (OSError, ValueError, AttributeError):
            continue
        if eos is not None and tok.token_to_id(eos) is not None:
            return eos
    for name in ("generation_config.json", "config.json"):
        try:
            eos_id = json.loads((folder / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
        if isinstance(eos_id, int) and tok.id_to_token(eos_id) is not None:
            return tok.id_to_token(eos_id)
    return next((t for t in EOS_GUESSES if tok.token_to_id(t) is not None), None)


def load_path(path: str | os.PathLike) -> HFTokenizer:
    """A local tokenizer.json, or a folder that holds one (with its config files). Cached by
    path and modification time, so repeated recipe validations read it once."""
    p = Path(path).expanduser()
    try:
        file = p / "tokenizer.json" if p.is_dir() else p
        stamp = file.stat().st_mtime_ns
    except (OSError, ValueError):
        if p.is_dir():
            raise TokenizerError(
                f"a tokenizer folder that holds tokenizer.json; {str(p)!r} has "
                f"{sorted(x.name for x in p.iterdir())[:8]} (save a slow tokenizer once with "
                f"transformers' AutoTokenizer.from_pretrained(...).save_pretrained(...))"
            ) from None
        raise TokenizerError(ACCEPTED) from None
    return _load_path(str(p.resolve()), stamp)


@functools.lru_cache(maxsize=16)
def _load_path(path: str, stamp: int) -> HFTokenizer:
    from tokenizers import Tokenizer as HF

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    try:
        tok = HF.from_file(str(file))
    except Exception as err:  # tokenizers raises plain Exception on a bad file
        raise TokenizerError(
            f"a readable Hugging Face tokenizer.json; {str(file)!r} failed to load: "
            f"{str(err).splitlines()[0][:200]}"
        ) from None
    folder = p if p.is_dir() else p.parent if p.name == "tokenizer.json" else None
    eos = (
        _configured_eos(folder, tok)
        if folder is not None
        else next((t for t in EOS_GUESSES if tok.token_to_id(t) is not None), None)
    )
    return HFTokenizer(tok, "path", eos, source=p)


def train_bpe(
    texts: Callable[[], Iterable[list[str]]], vocab_size: int, content_hash: str, cache: Path
) -> HFTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer, EOT as its one special token, id 0) trained on
    the batches of documents `texts()` yields. Cached under cache/tokenizers/ by a hash of
    the training text (`content_hash`), the vocab size and the tokenizers version; the
    training is deterministic, so a cache miss elsewhere gives the same file."""
    import tokenizers
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    key = hashlib.sha256(
        f"bpe-v1|{tokenizers.__version__}|{vocab_size}|{content_hash}".encode()
    ).hexdigest()[:32]
    folder = cache / "tokenizers" / key
    file = folder / "tokenizer.json"
    if not file.is_file():
        tok = HF(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts(), trainer=trainer)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tokenizer.json.{os.getpid()}"
        tok.save(str(tmp))
        os.replace(tmp, file)  # atomic: a concurrent trainer writes the same bytes
    return HFTokenizer(HF.from_file(str(file)), "bpe", EOT)
