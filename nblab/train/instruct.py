"""Instruction data: a jsonl file of prompt / response pairs, the loss on responses only.

    [data]
    name = "instruct"
    path = "data/sums.jsonl"        # one JSON object per line
    [finetune]
    prompt_field = "prompt"         # the names of the two fields (any string fields)
    response_field = "response"

    {"prompt": "123+456=", "response": "975$"}

A row of get_batch packs whole examples (prompt then response) from its start until the
next one would not fit, then pads; the targets are -100 except where the next token is a
response token, so the loss counts response tokens only. The val split is val_fraction of
the examples, chosen by a seeded hash of the prompt (a prompt that repeats stays on one
side). The tokenizer is the base model's when the run fine-tunes another run
(model.init_from = RUN_ID: the trainer passes that run's tokenizer), else data.tokenizer
over the file. Where answers are exact, `exact_match` grades greedy decoding: a val
example counts when the continuation of its prompt is its response, token for token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nblab.models.protocol import IGNORE_INDEX, greedy_generate
from nblab.train.tokenizer import ByteTokenizer, CharTokenizer, Tokenized

Problem = tuple[str, Any, str]
PAD_ID = 0  # the input filler after a row's last example (its targets are masked)


def read_examples(
    path: str | Path, prompt_field: str, response_field: str
) -> list[tuple[str, str]]:
    """(prompt, response) of every line of a jsonl file. ValueError names the file, the
    line and what is wrong (not JSON, not an object, a field missing or not a string)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"path={str(path)!r} for dataset 'instruct': no such file")
    out = []
    with p.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}:{number} is not JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{p}:{number} is a {type(row).__name__}, not a JSON object")
            for key in (prompt_field, response_field):
                if not isinstance(row.get(key), str):
                    got = "missing" if key not in row else f"a {type(row[key]).__name__}"
                    raise ValueError(
                        f"{p}:{number}: field {key!r} is {got}, not a string; the line's "
                        f"fields: {sorted(row)}"
                    )
            if not row[response_field]:
                raise ValueError(f"{p}:{number}: field {response_field!r} is empty")
            out.append((row[prompt_field], row[response_field]))
    if not out:
        raise ValueError(f"{p} holds no examples")
    return out


class InstructDataset(Tokenized):
    """Prompt / response examples; see the module docstring."""

    def __init__(
        self,
        examples: list[tuple[str, str]],
        tokenizer,
        *,
        source: str,
        val_fraction: float,
        seed: int,
    ) -> None:
        self.tokenizer, self.source, self.seed = tokenizer, source, seed
        self.vocab_size = tokenizer.vocab_size
        self.val_fraction = val_fraction
        self.examples: dict[str, list[tuple[list[int], list[int]]]] = {"train": [], "val": []}
        self.texts: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
        for prompt, response in examples:
            split = "val" if self._is_val(prompt) else "train"
            self.examples[split].append((tokenizer.encode(prompt), tokenizer.encode(response)))
            self.texts[split].append((prompt, response))
        for split, found in self.examples.items():
            if not found:
                raise ValueError(
                    f"dataset 'instruct' from {source}: split {split!r} is empty ({len(examples)} "
                    f"examples, val_fraction={val_fraction}); add examples or change val_fraction"
                )
        self.max_example_len = max(len(p) + len(r) for s in self.examples.values() for p, r in s)

    def _is_val(self, prompt: str) -> bool:
        key = f"{self.seed}:{prompt}".encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64
        return u < self.val_fraction

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.examples:
            raise ValueError(f"split={split!r} is not a split; accepted: ['train', 'val']")
        if self.max_example_len > seq_len + 1:
            raise ValueError(
                f"seq_len={seq_len} is too short for dataset 'instruct' from {self.source}: its "
                f"longest example (prompt + response) takes {self.max_example_len} tokens, so "
                f"seq_len must be at least {self.max_example_len - 1}"
            )
        pool = self.examples[split]
        rows, masks = [], []
        for _ in range(batch_size):
            row: list[int] = []
            keep: list[bool] = []  # keep[j]: token j is a response token (a target)
            while True:
                i = int(torch.randint(len(pool), (1,), generator=generator))
                prompt, response = pool[i]
                if len(row) + len(prompt) + len(response) > seq_len + 1:
                    break
                row += prompt + response
                keep += [False] * len(prompt) + [True] * len(response)
            fill = seq_len + 1 - len(row)
            rows.append(row + [PAD_ID] * fill)
            masks.append(keep + [False] * fill)
        tokens, targets = torch.tensor(rows), torch.tensor(masks)  # (B, T + 1) each
        x = tokens[:, :-1]  # (B, T)
        y = tokens[:, 1:].masked_fill(~targets[:, 1:], IGNORE_INDEX)  # (B, T)
        return x, y

    @torch.no_grad()
    def exact_match(self, model: torch.nn.Module, n: int, device) -> float:
        """The share of the first n val examples whose greedy continuation of the prompt
        is the response, token for token (prompts of one length decode together)."""
        chosen = self.examples["val"][:n]
        by_length: dict[int, list[tuple[list[int], list[int]]]] = {}
        for prompt, response in chosen:
            by_length.setdefault(len(prompt), []).append((prompt, response))
        was_training = model.training
        model.eval()
        correct = 0
        try:
            for length, group in by_length.items():
                steps = max(len(r) for _, r in group)
                prompts = torch.tensor([p for p, _ in group], device=device)  # (b, P)
                out = greedy_generate(model, prompts, steps)[:, length:].tolist()  # (b, steps)
                correct += sum(o[: len(r)] == r for o, (_, r) in zip(out, group, strict=True))
        finally:
            model.train(was_training)
        return correct / len(chosen)

    def describe(self) -> str:
        n_train, n_val = len(self.examples["train"]), len(self.examples["val"])
        return (
            f"instruct: {n_train:,} train and {n_val:,} val prompt/response examples from "
            f"{self.source}, {self.tokenizer.kind}-level vocab {self.vocab_size}, loss on "
            f"response tokens only"
        )


def build_instruct(
    *,
    path=None,
    tokenizer="char",
    val_fraction=0.1,
    seed=0,
    prompt_field="prompt",
    response_field="response",
    base_tokenizer=None,
) -> InstructDataset:
    """The registry's builder (nblab.train.data.DATASETS["instruct"]). base_tokenizer: the
    tokenizer of the model being fine-tuned, which replaces `tokenizer`."""
    if path is None:
        raise ValueError("dataset 'instruct' needs path=... (a jsonl file); got path=None")
    examples = read_examples(path, prompt_field, response_field)
    if base_tokenizer is not None:
        tok = base_tokenizer
    elif tokenizer == "byte":
        tok = ByteTokenizer()
    else:
        tok = CharTokenizer("".join(sorted({c for p, r in examples for c in p + r})))
    return InstructDataset(examples, tok, source=str(path), val_fraction=val_fraction, seed=seed)


def instruct_options(recipe: Any, build_data: Callable[[Any], Any]) -> dict[str, Any]:
    """build_instruct's options from a recipe: the [finetune] field names, and the
    tokenizer of the run a fine-tune starts from (model.init_from = RUN_ID[:STEP]: its data,
    built by `build_data`), so that token ids mean what they meant to it."""
    f = recipe.finetune
    options = {"prompt_field": f.prompt_field, "response_field": f.response_field}
    options["base_tokenizer"] = None
    if recipe.model.init_from:
        from nblab.recipe import Recipe
        from nblab.runs import RunStore
        from nblab.train import weights

        source = weights.resolve(recipe.model.init_from)
        if source.kind == "run":
            base = Recipe.from_toml(RunStore().run(source.run_id)["recipe"])
            options["base_tokenizer"] = getattr(build_data(base), "tokenizer", None)
    return options


def instruct_problems(recipe: Any) -> list[Problem]:
    """nblab.recipe.SOURCE_CHECKS: data.name = "instruct" reads a jsonl file whose lines
    have both fields as strings."""
    d, f = recipe.data, recipe.finetune
    if d.name != "instruct":
        return []
    if not d.path:
        return [
            (
                "data.path",
                d.path,
                "a jsonl file of prompt / response lines for data.name='instruct'",
            )
        ]
    try:
        read_examples(d.path, f.prompt_field, f.response_field)
    except ValueError as err:
        field = "data.path"
        for name, value in (("prompt_field", f.prompt_field), ("response_field", f.response_field)):
            if f"field {value!r} is missing" in str(err):
                return [(f"finetune.{name}", value, str(err))]
        return [(field, d.path, str(err))]
    except UnicodeDecodeError as err:
        return [("data.path", d.path, f"a UTF-8 jsonl file: {err}")]
    return []


__all__ = [
    "InstructDataset",
    "build_instruct",
    "instruct_options",
    "instruct_problems",
    "read_examples",
]
