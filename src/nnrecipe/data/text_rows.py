"""Text files bigger than memory (`data.stream` for text data): one pass over the file keeps, per row, where
it starts, how many bytes it takes and its label; the texts stay on disk and are read (a seek and a parse
per row) when a batch, a report or a check asks for them.

`LazyTexts` stands where the in-memory path has a list of strings: it has a length, integer indexing,
subsets that stay on disk and iteration in file order; the text loader (data/text.py) tokenises a batch's
rows when it is drawn, so a mid-epoch resume reads none of the rows before it.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nnrecipe.errors import UserError, decode_line

CHUNK = 4096  # rows parsed together when iterating


def read_records(path: Path, starts: np.ndarray, sizes: np.ndarray, idx) -> list[str]:
    """The records at `idx` of an indexed file (byte offsets and sizes), decoded, in that order; read in file
    order, one seek each."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    out = [""] * len(idx)
    with Path(path).open("rb") as f:
        for j in np.argsort(starts[idx], kind="stable").tolist():
            f.seek(int(starts[idx[j]]))
            out[j] = decode_line(f.read(int(sizes[idx[j]])), int(starts[idx[j]]))
    return out


class RowFile:
    """A CSV/TSV (with a header) or JSONL file's rows, located by byte offset."""

    def __init__(self, path: Path, fmt: str, header: list[str] | None, starts: np.ndarray, sizes: np.ndarray):
        self.path, self.fmt, self.header, self.starts, self.sizes = Path(path), fmt, header, starts, sizes

    def rows(self, idx) -> list[dict]:
        """The parsed rows at `idx`, in that order."""
        return [self._parse(record) for record in read_records(self.path, self.starts, self.sizes, idx)]

    def _parse(self, record: str) -> dict:
        if self.fmt == "jsonl":
            return json.loads(record)
        return dict(zip(self.header, next(csv_reader(io.StringIO(record), self.fmt)), strict=False))


class LazyRecords:
    """Some records of an indexed file, read when used: a length, integer indexing, subsets that stay on disk
    and iteration in file order. What a streamed split holds where the in-memory one has a list; a subclass
    says how records are read (`read`)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: index with one integer, or read(indices)")
        return self.read([i])[0]

    def read(self, idx) -> list:
        """The values at positions `idx`."""
        raise NotImplementedError

    def subset(self, idx):
        part = copy.copy(self)
        part.rows = self.rows[np.asarray(list(idx), dtype=np.int64)]
        return part

    def __iter__(self) -> Iterator:
        for start in range(0, len(self), CHUNK):
            yield from self.read(range(start, min(start + CHUNK, len(self))))


class LazyTexts(LazyRecords):
    """One text column of some rows of a RowFile: what a TextSet holds for a streamed file."""

    def __init__(self, file: RowFile, column: str, rows: np.ndarray):
        super().__init__(rows)
        self.file, self.column = file, column

    def read(self, idx) -> list[str]:
        """The texts at positions `idx` of this column."""
        return [str(r[self.column]) for r in self.file.rows(self.rows[np.asarray(idx, dtype=np.int64)])]


def csv_options(fmt: str) -> dict:
    """The csv module's dialect for data.format csv (quoted fields) or tsv (no quoting). A CSV written by hand
    as `text, label` has a space after each comma: skipped, or the column was ' label' ("no column 'label'"),
    the labels ' 1' and ' 0', and a quoted field after a space was split at its commas."""
    return {
        "delimiter": "\t" if fmt == "tsv" else ",",
        "quoting": csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
        "skipinitialspace": fmt == "csv",
    }


def csv_reader(f, fmt: str):
    return csv.reader(f, **csv_options(fmt))


def records(path: Path, fmt: str) -> Iterator[tuple[int, int, dict | list[str]]]:
    """(start byte, size in bytes, parsed record) of each non-empty record; CSV records may span lines."""
    with path.open("rb") as f:
        if fmt == "jsonl":
            pos = 0
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield pos, len(line), json_object(line, path, n)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                pos += len(line)
            return
        starts, pos = [], [0]

        def lines() -> Iterator[str]:
            for line in f:
                starts.append(pos[0])
                pos[0] += len(line)
                yield decode_line(line, starts[-1])

        for record in csv_reader(lines(), fmt):
            first = starts[0]
            starts.clear()
            if record:
                yield first, pos[0] - first, record


def index_text_file(
    path: Path, fmt: str, text_column: str, label_column: str, pair_column: str | None, other_columns: tuple[str, ...]
):
    """One pass over `path`: a TextSet whose texts (and pairs) are LazyTexts on the file; labels and the other
    columns in memory."""
    from nnrecipe.data.text import TextSet

    starts, sizes, labels = [], [], []
    others: dict[str, list[str]] = {c: [] for c in other_columns}
    interned: dict[str, str] = {}  # one string object per distinct label or group
    header = None
    needed = [c for c in (text_column, label_column, pair_column, *other_columns) if c]
    for start, size, record in records(path, fmt):
        if fmt != "jsonl":
            if header is None:
                header = list(record)
                check_columns(path, needed, header)
                continue
            record = dict(zip(header, record, strict=False))
        elif not starts:
            check_columns(path, needed, list(record))
        label = checked_row(path, len(starts) + 1, record, needed, label_column, f" (at byte {start:,})")
        starts.append(start)
        sizes.append(size)
        labels.append(interned.setdefault(label, label))
        for c in other_columns:
            value = str(record[c])
            others[c].append(interned.setdefault(value, value))
    if not starts:
        raise UserError(f"{path}: no rows")
    file = RowFile(path, fmt, header, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int32))
    rows = np.arange(len(starts), dtype=np.int64)
    texts = LazyTexts(file, text_column, rows)
    pairs = LazyTexts(file, pair_column, rows) if pair_column else None
    return TextSet(texts, pairs, labels, others)


def json_object(line: str | bytes, path: Path, number: int) -> dict:
    """One JSONL line, which must hold an object: a list or a string row was listed as "columns are h, e, l,
    l, o" (its items or characters), or ended in a traceback."""
    row = json.loads(line)
    if not isinstance(row, dict):
        raise UserError(f"{path}:{number}: not a JSON object ({type(row).__name__}); each line holds one {{...}} row")
    return row


def checked_row(path: Path, number: int, record: dict, needed: list[str], label_column: str, at: str = "") -> str:
    """The row's label as text, once the row has every `needed` column and a label. A short CSV row or a JSON
    null became the class 'None', an empty field the class '' (in memory; the streamed reader refused the
    first, took the second); a JSON 1.0 beside 1 made two classes."""
    where = f"{path}: row {number:,}{at}"
    missing = [c for c in needed if record.get(c) is None]
    if missing:
        raise UserError(f"{where} has no {', '.join(map(repr, missing))}")
    label = record[label_column]
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if not str(label).strip():
        raise UserError(f"{where}: the label ({label_column!r}) is empty; label every row, or remove the row")
    return str(label)


def shown(column) -> str:
    """A column name as an error lists it: quoted when spaces around it would be invisible."""
    return repr(column) if isinstance(column, str) and column != column.strip() else str(column)


def check_columns(path: Path, needed: list[str], columns: list[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(repr(m) for m in missing)}; columns are {', '.join(map(shown, columns))} "
            "(set data.text_column / data.label_column / data.group_column / data.split_groups)"
        )
