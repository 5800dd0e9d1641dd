"""Text data: CSV/TSV/JSONL classification files, tokenised once, served in length-grouped batches with
dynamic padding (each batch padded to its own longest sequence, not to max_length)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnrecipe.data.splits import epoch_generator, epoch_order, shard
from nnrecipe.data.stream import prefetched
from nnrecipe.data.text_rows import LazyTexts, check_columns, checked_row, csv_options, index_text_file, json_object
from nnrecipe.errors import TEXT_ENCODING, UserError, existing_file, utf8_reader


@dataclass
class TextSet:
    texts: list[str] | LazyTexts  # LazyTexts: a streamed file's texts, read when asked for (data/text_rows.py)
    pairs: list[str] | LazyTexts | None
    labels: list[str]
    columns: dict[str, list[str]] = field(default_factory=dict)  # other columns asked for (groups), by name

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.texts, LazyTexts)

    def in_memory(self) -> TextSet:
        """The same rows with their texts read into lists (for checks that compare every text with every other)."""
        if not self.streamed:
            return self
        pairs = list(self.pairs) if self.pairs is not None else None
        return TextSet(list(self.texts), pairs, self.labels, self.columns)

    def subset(self, idx) -> TextSet:
        idx = list(idx)

        def pick(values):
            return values.subset(idx) if isinstance(values, LazyTexts) else [values[i] for i in idx]

        return TextSet(
            pick(self.texts),
            pick(self.pairs) if self.pairs is not None else None,
            [self.labels[i] for i in idx],
            {name: [values[i] for i in idx] for name, values in self.columns.items()},
        )

    def concat(self, other: TextSet) -> TextSet:
        """Both sets' rows (pairs kept when both have them; other columns when both hold them)."""
        if self.streamed or other.streamed:
            raise UserError("continual: streamed texts cannot be joined with a replay memory; set data.stream: false")
        if (self.pairs is None) != (other.pairs is None):
            raise UserError("continual: single texts and text pairs cannot be trained together")
        pairs = self.pairs + other.pairs if self.pairs is not None else None
        columns = {n: v + other.columns[n] for n, v in self.columns.items() if n in other.columns}
        return TextSet(self.texts + other.texts, pairs, self.labels + other.labels, columns)


@utf8_reader
def read_text_file(
    path: Path, fmt: str, text_column: str, label_column: str, pair_column: str | None = None,
    other_columns: tuple[str, ...] = (), stream: bool = False,
) -> TextSet:  # fmt: skip
    """Rows of a CSV/TSV (with a header) or JSONL file; `fmt` auto follows the extension. `other_columns`
    (a group column...) are read as strings into `columns`. `stream`: the texts stay in the file, read when
    asked for (data/text_rows.py)."""
    path = existing_file(path, "data file")
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: cannot tell the format from the extension; set data.format: csv, tsv or jsonl")
    if stream:
        return index_text_file(path, fmt, text_column, label_column, pair_column, other_columns)
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding=TEXT_ENCODING).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json_object(line, path, i))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    else:
        with path.open(newline="", encoding=TEXT_ENCODING) as f:
            rows = list(csv.DictReader(f, **csv_options(fmt)))
    if not rows:
        raise UserError(f"{path}: no rows")
    needed = [c for c in (text_column, label_column, pair_column, *other_columns) if c]
    check_columns(path, needed, list(rows[0]))
    labels = [checked_row(path, i, r, needed, label_column) for i, r in enumerate(rows, 1)]
    return TextSet(
        [str(r[text_column]) for r in rows],
        [str(r[pair_column]) for r in rows] if pair_column else None,
        labels,
        {c: [str(r[c]) for r in rows] for c in other_columns},
    )


def label_names(labels: list[str]) -> list[str]:
    """Sorted label names; numeric labels sort as numbers (0, 1, 2, ..., 10)."""
    unique = set(labels)
    return sorted(unique, key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))


class TextLoader:
    """Batches of token ids, padded per batch. With group_by_length, examples are sorted by length within
    shuffled chunks of 50 batches and the batches are shuffled again: little padding, still random.
    Labels are one id per example (classification) or one per token (NER, padded with -100). In a
    multi-process run each process takes every world_size-th batch of the same order (equal counts)."""

    def __init__(
        self,
        encodings: list[list[int]],
        labels: list[int] | list[list[int]],
        batch_size: int,
        pad_id: int,
        *,
        device="cpu",
        shuffle=False,
        seed=0,
        group_by_length=False,
        type_ids: list[list[int]] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        # One tensor per example, made once: a batch is then a single pad_sequence call.
        self.enc = [torch.as_tensor(e, dtype=torch.long) for e in encodings]
        self.lengths = [len(e) for e in encodings]
        self.per_token = bool(labels) and isinstance(labels[0], (list, tuple))
        self.labels = (
            [torch.tensor(l, dtype=torch.long) for l in labels]
            if self.per_token
            else torch.tensor(labels, dtype=torch.long)
        )
        self.type_ids = [torch.as_tensor(t, dtype=torch.long) for t in type_ids] if type_ids is not None else None
        self._batching(batch_size, pad_id, device, shuffle, seed, group_by_length, rank, world_size)

    def _batching(self, batch_size, pad_id, device, shuffle, seed, group_by_length, rank, world_size) -> None:
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, torch.device(device)
        self.shuffle, self.seed, self.group = shuffle, seed, group_by_length
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size // self.world_size

    def _order(self, epoch: int) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        g = epoch_generator(self.seed, epoch)
        order = epoch_order(n, g).tolist()
        if self.group:
            chunk = bs * 50
            order = [i for c in range(0, n, chunk) for i in sorted(order[c : c + chunk], key=self.lengths.__getitem__)]
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        if self.group:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return shard(batches, self.rank, self.world_size)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self._order(epoch)[start:]:
            yield self._collate(
                [self.enc[i] for i in idx],
                [self.lengths[i] for i in idx],
                [self.labels[i] for i in idx] if self.per_token else self.labels[idx],
                [self.type_ids[i] for i in idx] if self.type_ids is not None else None,
            )

    def _collate(self, enc: list[torch.Tensor], lengths: list[int], labels, type_ids) -> dict[str, torch.Tensor]:
        """One batch padded to its longest sequence, on the device."""
        pad = torch.nn.utils.rnn.pad_sequence
        ids = pad(enc, batch_first=True, padding_value=self.pad_id)
        mask = (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
        labels = pad(labels, batch_first=True, padding_value=-100) if self.per_token else labels
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if type_ids is not None:
            batch["token_type_ids"] = pad(type_ids, batch_first=True, padding_value=0)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def token_counts(tokenizer, part: TextSet, max_length: int, chunk: int = 1024) -> list[int]:
    """How many tokens each row of a streamed set tokenises to (truncated at max_length), read chunk by chunk."""
    counts: list[int] = []
    for start in range(0, len(part), chunk):
        rows = range(start, min(start + chunk, len(part)))
        pairs = part.pairs.read(rows) if part.pairs is not None else None
        enc = tokenizer(part.texts.read(rows), pairs, truncation=True, max_length=max_length)
        counts += [len(ids) for ids in enc["input_ids"]]
    return counts


class StreamedTextLoader(TextLoader):
    """A TextLoader over a streamed TextSet: a batch's rows are read and tokenised when it is drawn (a thread
    makes the next two while one trains). Grouping by length needs every row's token count: one tokenising
    pass keeps the counts alone, so the batches are the in-memory loader's, tensor for tensor. (Grouping by
    the characters known from the file's pass instead padded SST-2's batches to 42% more tokens: its word
    counts vary twofold at one character length.)"""

    def __init__(
        self, tokenizer, part: TextSet, labels: list[int], batch_size: int, max_length: int, *, device="cpu",
        shuffle=False, seed=0, group_by_length=False, rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        self.tokenizer, self.part, self.max_length = tokenizer, part, max_length
        self.lengths = token_counts(tokenizer, part, max_length) if group_by_length and shuffle else [0] * len(part)
        self.per_token, self.labels, self.type_ids = False, torch.tensor(labels, dtype=torch.long), None
        self._batching(batch_size, tokenizer.pad_token_id, device, shuffle, seed, group_by_length, rank, world_size)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order(epoch)
        yield from prefetched(lambda i: self._batch(order[i]), start, len(order))

    def _batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        """The rows at `idx` read, tokenised and padded (by the tokenizer, to the right, as _collate pads)."""
        texts = self.part.texts.read(idx)
        pairs = self.part.pairs.read(idx) if self.part.pairs is not None else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             padding_side="right", return_tensors="pt")  # fmt: skip
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": self.labels[idx]}
        if "token_type_ids" in enc:
            batch["token_type_ids"] = enc["token_type_ids"]
        return {k: v.long().to(self.device, non_blocking=True) for k, v in batch.items()}
