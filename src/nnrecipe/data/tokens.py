"""Token classification (NER) data: CoNLL column files and JSONL, tags normalised to IOB2, and the
alignment between words and a fast tokenizer's sub-tokens (label on the first sub-token, -100 elsewhere).
A streamed file (data.stream) keeps each sentence's place and its tags; its words are read when a batch,
a report or a check asks for them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnrecipe.data.text_rows import LazyRecords, read_records
from nnrecipe.errors import UserError, decode_line, existing_file, utf8_reader

IGNORE = -100  # the label cross-entropy skips


@dataclass
class TokenSet:
    words: list[list[str]] | LazyWords  # LazyWords: a streamed file's words, read when asked for
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def streamed(self) -> bool:
        return isinstance(self.words, LazyWords)

    def in_memory(self) -> TokenSet:
        """The same sentences with their words read into lists."""
        return TokenSet(list(self.words), self.tags) if self.streamed else self

    def subset(self, idx) -> TokenSet:
        idx = list(idx)
        words = self.words.subset(idx) if self.streamed else [self.words[i] for i in idx]
        return TokenSet(words, [self.tags[i] for i in idx])

    def concat(self, other: TokenSet) -> TokenSet:
        if self.streamed or other.streamed:
            raise UserError(
                "continual: streamed sentences cannot be joined with a replay memory; set data.stream: false"
            )
        return TokenSet(self.words + other.words, self.tags + other.tags)


# BIOES (single, end) and BILOU (unit, last) prefixes as IOB2 says them: a one-word entity opens (B-), an
# entity's last word continues it (I-). The conversion loses nothing that IOB2 models: where entities are.
OPENS, CONTINUES = {"S": "B", "U": "B"}, {"E": "I", "L": "I"}


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (I- may open an entity; B- only between two adjacent entities of one type), BIOES or BILOU to IOB2
    (every entity opens with B-). Valid IOB2 passes through unchanged, so conversion is always safe."""
    out, prev = [], "O"
    for tag in tags:
        if tag != "O" and tag[0] in "SUEL":
            tag = OPENS.get(tag[0], CONTINUES.get(tag[0])) + tag[1:]
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def _check_tags(path: Path, where: str, tags: list[str]) -> None:
    for t in tags:
        if t != "O" and not (len(t) > 2 and t[1] == "-" and t[0] in "BISEUL"):
            raise UserError(
                f"{path}:{where}: tag {t!r} is not O, B-TYPE or I-TYPE (IOB1, IOB2, BIOES or BILOU expected)"
            )


@dataclass
class TokenFormat:
    """How a file's sentences are written: CoNLL columns or JSONL keys."""

    fmt: str = "conll"
    token_column: int = 0
    tag_column: int = -1
    tokens_key: str = "tokens"
    tags_key: str = "tags"

    def jsonl_row(self, path: Path, n: int, line: str) -> tuple[list[str], list[str]]:
        try:
            row = json.loads(line)
            return [str(x) for x in row[self.tokens_key]], [str(x) for x in row[self.tags_key]]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        except (KeyError, TypeError):
            raise UserError(
                f"{path}:{n}: expected an object with lists {self.tokens_key!r} and {self.tags_key!r} "
                "(set data.tokens_key / data.tags_key)"
            ) from None

    def conll_columns(self, path: Path, n: int, cols: list[str]) -> tuple[str, str]:
        try:
            return cols[self.token_column], cols[self.tag_column]
        except IndexError:
            raise UserError(
                f"{path}:{n}: {len(cols)} columns; data.token_column={self.token_column} and "
                f"data.tag_column={self.tag_column} need more"
            ) from None


def sentences_of(path: Path, form: TokenFormat) -> Iterator[tuple[int, int, list[str], list[str]]]:
    """(start byte, size in bytes, words, IOB2 tags) of each sentence of a CoNLL or JSONL file, checked."""
    with path.open("rb") as f:
        pos = 0
        if form.fmt == "jsonl":
            for n, raw in enumerate(f, 1):
                line = decode_line(raw, pos)
                if line.strip():
                    w, t = form.jsonl_row(path, n, line)
                    if len(w) != len(t):
                        raise UserError(f"{path}:{n}: {len(w)} tokens but {len(t)} tags")
                    _check_tags(path, str(n), t)
                    if w:
                        yield pos, len(raw), w, to_iob2(t)
                pos += len(raw)
            return
        first, sent_w, sent_t = 0, [], []
        for n, raw in enumerate(f, 1):
            cols = decode_line(raw, pos).split()
            if not cols or cols[0] == "-DOCSTART-":
                if sent_w:
                    yield first, pos - first, sent_w, to_iob2(sent_t)
                sent_w, sent_t = [], []
            else:
                w, t = form.conll_columns(path, n, cols)
                _check_tags(path, str(n), [t])
                if not sent_w:
                    first = pos
                sent_w.append(w)
                sent_t.append(t)
            pos += len(raw)
        if sent_w:
            yield first, pos - first, sent_w, to_iob2(sent_t)


@utf8_reader
def read_token_file(
    path: Path,
    fmt: str = "auto",
    token_column: int = 0,
    tag_column: int = -1,
    tokens_key: str = "tokens",
    tags_key: str = "tags",
    stream: bool = False,
) -> TokenSet:
    """Sentences from a CoNLL column file (whitespace-separated columns, blank lines and -DOCSTART-
    between sentences) or a JSONL file ({"tokens": [...], "tags": [...]} per line); tags come back IOB2.
    `stream`: the words stay in the file, read when asked for; the tags (one shared string per tag) are held."""
    path = existing_file(path, "data file")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "conll"
    form = TokenFormat(fmt, token_column, tag_column, tokens_key, tags_key)
    words: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    sizes: list[int] = []
    interned: dict[str, str] = {}
    for start, size, w, t in sentences_of(path, form):
        if stream:
            starts.append(start)
            sizes.append(size)
            t = [interned.setdefault(x, x) for x in t]
        else:
            words.append(w)
        tags.append(t)
    if not tags:
        raise UserError(f"{path}: no sentences")
    if stream:
        file = SentenceFile(path, form, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int32))
        return TokenSet(LazyWords(file, np.arange(len(tags), dtype=np.int64)), tags)
    return TokenSet(words, tags)


class SentenceFile:
    """A CoNLL or JSONL file's sentences, located by byte offset (data.stream for NER data)."""

    def __init__(self, path: Path, form: TokenFormat, starts: np.ndarray, sizes: np.ndarray):
        self.path, self.form, self.starts, self.sizes = Path(path), form, starts, sizes

    def words(self, idx) -> list[list[str]]:
        """The words of the sentences at `idx`, in that order."""
        return [self._parse(record) for record in read_records(self.path, self.starts, self.sizes, idx)]

    def _parse(self, record: str) -> list[str]:
        if self.form.fmt == "jsonl":
            return self.form.jsonl_row(self.path, 0, record)[0]
        return [line.split()[self.form.token_column] for line in record.splitlines() if line.strip()]


class LazyWords(LazyRecords):
    """The word lists of some sentences of a SentenceFile: what a TokenSet holds for a streamed file."""

    def __init__(self, file: SentenceFile, rows: np.ndarray):
        super().__init__(rows)
        self.file = file

    def read(self, idx) -> list[list[str]]:
        return self.file.words(self.rows[np.asarray(idx, dtype=np.int64)])


def tag_names(tags: list[list[str]]) -> list[str]:
    """O first, then B-/I- per entity type in alphabetical order."""
    types = sorted({t[2:] for sent in tags for t in sent if t != "O"})
    return ["O"] + [f"{p}-{ty}" for ty in types for p in "BI"]


@dataclass
class Encoded:
    """Sub-token ids with labels aligned to them, and which word each labelled position stands for."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    word_index: list[list[int]]  # per example: the word of each labelled (first sub-token) position, in order
    n_words: list[int]


def encode_words(
    tokenizer, words: list[list[str]], tags: list[list[str]] | None, tag_ids: dict[str, int], max_length: int
) -> Encoded:
    """Tokenise pre-split words; the first sub-token of each word carries its tag, the rest -100. Words
    cut off by max_length (or that tokenise to nothing) carry no position and are predicted O."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    ids, labels, index = [], [], []
    for i in range(len(words)):
        prev, row, where = None, [], []
        for wid in enc.word_ids(i):
            if wid is None or wid == prev:
                row.append(IGNORE)
            else:
                row.append(tag_ids[tags[i][wid]] if tags is not None else 0)
                where.append(wid)
            prev = wid
        ids.append(enc["input_ids"][i])
        labels.append(row)
        index.append(where)
    return Encoded(ids, labels, index, [len(w) for w in words])


_WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text to (word, start, end) the way CoNLL-style data is tokenised: words, punctuation apart."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity in an IOB2 sequence (a stray I- opens one)."""
    out, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and (tag == "O" or tag.startswith("B-") or tag[2:] != kind):
            out.append((kind, start, i))
            start = None
        if tag != "O" and start is None:
            start, kind = i, tag[2:]
    return out
