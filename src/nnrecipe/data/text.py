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
from nnrecipe.errors import UserError


@dataclass
class TextSet:
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    columns: dict[str, list[str]] = field(default_factory=dict)  # other columns asked for (groups), by name

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> TextSet:
        idx = list(idx)
        return TextSet(
            [self.texts[i] for i in idx],
            [self.pairs[i] for i in idx] if self.pairs else None,
            [self.labels[i] for i in idx],
            {name: [values[i] for i in idx] for name, values in self.columns.items()},
        )

    def concat(self, other: TextSet) -> TextSet:
        """Both sets' rows (pairs kept when both have them; other columns when both hold them)."""
        if (self.pairs is None) != (other.pairs is None):
            raise UserError("continual: single texts and text pairs cannot be trained together")
        pairs = self.pairs + other.pairs if self.pairs is not None else None
        columns = {n: v + other.columns[n] for n, v in self.columns.items() if n in other.columns}
        return TextSet(self.texts + other.texts, pairs, self.labels + other.labels, columns)


def read_text_file(
    path: Path, fmt: str, text_column: str, label_column: str, pair_column: str | None = None,
    other_columns: tuple[str, ...] = (),
) -> TextSet:  # fmt: skip
    """Rows of a CSV/TSV (with a header) or JSONL file; `fmt` auto follows the extension. `other_columns`
    (a group column...) are read as strings into `columns`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: cannot tell the format from the extension; set data.format: csv, tsv or jsonl")
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(
                csv.DictReader(
                    f,
                    delimiter="\t" if fmt == "tsv" else ",",
                    quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                )
            )
    if not rows:
        raise UserError(f"{path}: no rows")
    needed = [c for c in (text_column, label_column, pair_column, *other_columns) if c]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(repr(m) for m in missing)}; columns are {', '.join(map(str, rows[0]))} "
            "(set data.text_column / data.label_column / data.group_column / data.split_groups)"
        )
    return TextSet(
        [str(r[text_column]) for r in rows],
        [str(r[pair_column]) for r in rows] if pair_column else None,
        [str(r[label_column]) for r in rows],
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
        self.enc = [torch.tensor(e, dtype=torch.long) for e in encodings]
        self.lengths = [len(e) for e in encodings]
        self.per_token = bool(labels) and isinstance(labels[0], (list, tuple))
        self.labels = (
            [torch.tensor(l, dtype=torch.long) for l in labels]
            if self.per_token
            else torch.tensor(labels, dtype=torch.long)
        )
        self.type_ids = [torch.tensor(t, dtype=torch.long) for t in type_ids] if type_ids is not None else None
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
        pad = torch.nn.utils.rnn.pad_sequence
        for idx in self._order(epoch)[start:]:
            ids = pad([self.enc[i] for i in idx], batch_first=True, padding_value=self.pad_id)
            lengths = torch.tensor([self.lengths[i] for i in idx])
            mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
            labels = (
                pad([self.labels[i] for i in idx], batch_first=True, padding_value=-100)
                if self.per_token
                else self.labels[idx]
            )
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
            if self.type_ids is not None:
                batch["token_type_ids"] = pad([self.type_ids[i] for i in idx], batch_first=True, padding_value=0)
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
