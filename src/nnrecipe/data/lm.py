"""Text as one token stream for language modelling: reading files, three tokenisers, and a loader of random
contiguous blocks.

Tokenisers: `char` (the characters of the training and validation text; any other is an error naming it),
`bytes` (UTF-8 bytes, 256 ids: nothing is unknown), `bpe` (byte-level BPE trained on the training text with
Hugging Face `tokenizers`), or a local tokenizer.json / tokenizer folder. A stream is encoded once into a
uint16 (or uint32) array, memory-mapped from the run directory, so a corpus larger than memory trains too.
Batch i of epoch e draws its block offsets from (seed, e, i): resume skips the first batches and goes on
exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nnrecipe.data.files import visible_files
from nnrecipe.engine.seeding import derived_seed
from nnrecipe.errors import TEXT_ENCODING, UserError, existing_file, utf8_reader


@utf8_reader
def read_text(path: Path, text_field: str = "text") -> str:
    """A .txt file, every .txt file of a folder (sorted, joined by blank lines), or a JSONL file's field."""
    path = Path(path)
    if path.is_dir():
        files = visible_files(path, (".txt",))  # a notebook's .ipynb_checkpoints copy was read twice
        if not files:
            raise UserError(f"data: no .txt files in {path}")
        return "\n\n".join(read_text(f) for f in files)  # a file that is not UTF-8 is named
    existing_file(path, "data file")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text(encoding=TEXT_ENCODING).splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):  # a string row: `in` searched its characters, then a TypeError
                    raise UserError(f"{path}:{i}: not a JSON object with a {text_field!r} field")
                if row.get(text_field) is None:  # null was the text "None"
                    raise UserError(f"{path}:{i}: no field {text_field!r} (set data.text_field)")
                rows.append(str(row[text_field]))
        return "\n\n".join(rows)
    return path.read_text(encoding=TEXT_ENCODING)


class Tokenizer(ABC):
    """ids <-> text, described by a JSON-able spec so a run can rebuild it."""

    kind: str
    vocab_size: int

    @abstractmethod
    def encode(self, text: str, where: str = "text") -> list[int]:
        """Token ids; UserError naming `where` for text the tokenizer cannot read."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of `ids`."""

    def spec(self) -> dict:
        return {"kind": self.kind}

    def tokens_per_char(self, text: str) -> float:
        """How many tokens one character of `text` costs (bits per character = bits per token x this)."""
        return len(self.encode(text)) / max(1, len(text))


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str, where: str = "text") -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            unseen = sorted(set(text) - set(self.index))
            raise UserError(
                f"{where}: characters the training text never had: {''.join(unseen)[:20]!r} "
                "(a char vocabulary is the training text's; data.tokenizer: bytes reads any text)"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def spec(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def tokens_per_char(self, text: str) -> float:
        return 1.0


class ByteTokenizer(Tokenizer):
    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str, where: str = "text") -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer: byte-level BPE trained here, or a local tokenizer.json."""

    kind = "bpe"

    def __init__(self, tokenizer, path: str | None = None):
        self.tok, self.path = tokenizer, path
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> HFTokenizer:
        from tokenizers import Tokenizer as Tok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = Tok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        chunk = 1 << 20  # the trainer takes an iterator; megabyte pieces keep memory flat
        tok.train_from_iterator((text[i : i + chunk] for i in range(0, len(text), chunk)), trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> HFTokenizer:
        from tokenizers import Tokenizer as Tok

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"data.tokenizer: no tokenizer.json at {path}")
        return cls(Tok.from_file(str(file)), str(file))

    def encode(self, text: str, where: str = "text") -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def spec(self) -> dict:
        return {"kind": self.kind, "file": "tokenizer.json"}


def fit_tokenizer(kind: str, text: str, vocab_size: int, also: str = "") -> Tokenizer:
    """The tokenizer `kind` names, fitted to `text` (a char vocabulary also takes the characters of `also`)."""
    if kind in ("auto", "char"):  # auto: a model from scratch reads characters
        return CharTokenizer.fit(text + also)
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return HFTokenizer.train(text, vocab_size)
    return HFTokenizer.load(Path(kind))  # a local tokenizer.json or folder


def load_tokenizer(spec: dict, run_dir: Path) -> Tokenizer:
    """The tokenizer a run saved (its spec, and tokenizer.json in the run directory for BPE)."""
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"])
    if spec["kind"] == "bytes":
        return ByteTokenizer()
    return HFTokenizer.load(Path(run_dir) / spec["file"])


def encode_stream(tokenizer: Tokenizer, text: str, path: Path | None = None, where: str = "text") -> np.ndarray:
    """The whole text as one uint16 (uint32 for vocabularies over 65,535) array; written to `path` and
    memory-mapped from there when a path is given."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65_535 else np.uint32
    ids = np.asarray(tokenizer.encode(text, where), dtype=dtype)
    if path is None:
        return ids
    path.parent.mkdir(parents=True, exist_ok=True)
    ids.tofile(path)
    return np.memmap(path, dtype=dtype, mode="r")


class BlockLoader:
    """Batches of (x, y): `batch_size` blocks of `block` tokens and the same blocks shifted by one.

    Training (shuffle): each batch draws its offsets from (seed, epoch, batch, rank), `batches` per epoch.
    Evaluation: consecutive non-overlapping blocks from the start, at most `batches` batches."""

    def __init__(
        self,
        tokens: np.ndarray,
        block: int,
        batch_size: int,
        *,
        batches: int | None = None,
        device="cpu",
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        where: str = "data",
    ):
        if len(tokens) < block + 1:
            raise UserError(
                f"{where}: {len(tokens)} tokens, too short for one block of {block} (+1); "
                "give more text or a smaller data.block_size"
            )
        self.tokens, self.block, self.batch_size = tokens, block, batch_size
        self.device, self.shuffle, self.seed, self.rank = torch.device(device), shuffle, seed, rank
        self.world_size = world_size
        whole = math.ceil(((len(tokens) - 1) // block) / batch_size)
        self._len = batches if shuffle else min(whole, batches or whole)

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_blocks = (len(self.tokens) - 1) // self.block
        for i in range(start, self._len):
            if self.shuffle:
                g = torch.Generator().manual_seed(derived_seed(self.seed, epoch, i, self.rank))
                offsets = torch.randint(len(self.tokens) - self.block - 1, (self.batch_size,), generator=g).tolist()
            else:
                first = i * self.batch_size
                offsets = [b * self.block for b in range(first, min(first + self.batch_size, n_blocks))]
            rows = np.stack([np.asarray(self.tokens[o : o + self.block + 1], dtype=np.int64) for o in offsets])
            xy = torch.from_numpy(rows)
            yield xy[:, :-1].to(self.device), xy[:, 1:].to(self.device)
