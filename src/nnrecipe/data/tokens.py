"""Token classification (NER) data: CoNLL column files and JSONL, tags normalised to IOB2, and the
alignment between words and a fast tokenizer's sub-tokens (label on the first sub-token, -100 elsewhere)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nnrecipe.errors import UserError

IGNORE = -100  # the label cross-entropy skips


@dataclass
class TokenSet:
    words: list[list[str]]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, idx) -> TokenSet:
        idx = list(idx)
        return TokenSet([self.words[i] for i in idx], [self.tags[i] for i in idx])

    def concat(self, other: TokenSet) -> TokenSet:
        return TokenSet(self.words + other.words, self.tags + other.tags)


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (I- may open an entity; B- only between two adjacent entities of one type) to IOB2 (every
    entity opens with B-). Valid IOB2 passes through unchanged, so conversion is always safe."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def _check_tags(path: Path, where: str, tags: list[str]) -> None:
    for t in tags:
        if t != "O" and not (len(t) > 2 and t[1] == "-" and t[0] in "BI"):
            raise UserError(f"{path}:{where}: tag {t!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2 expected)")


def read_token_file(
    path: Path,
    fmt: str = "auto",
    token_column: int = 0,
    tag_column: int = -1,
    tokens_key: str = "tokens",
    tags_key: str = "tags",
) -> TokenSet:
    """Sentences from a CoNLL column file (whitespace-separated columns, blank lines and -DOCSTART-
    between sentences) or a JSONL file ({"tokens": [...], "tags": [...]} per line); tags come back IOB2."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "conll"
    words: list[list[str]] = []
    tags: list[list[str]] = []
    if fmt == "jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                w, t = [str(x) for x in row[tokens_key]], [str(x) for x in row[tags_key]]
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            except (KeyError, TypeError):
                raise UserError(
                    f"{path}:{i}: expected an object with lists {tokens_key!r} and {tags_key!r} "
                    "(set data.tokens_key / data.tags_key)"
                ) from None
            if len(w) != len(t):
                raise UserError(f"{path}:{i}: {len(w)} tokens but {len(t)} tags")
            _check_tags(path, str(i), t)
            if w:
                words.append(w)
                tags.append(to_iob2(t))
    else:
        sent_w: list[str] = []
        sent_t: list[str] = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if sent_w:
                    words.append(sent_w)
                    tags.append(to_iob2(sent_t))
                sent_w, sent_t = [], []
                continue
            try:
                w, t = cols[token_column], cols[tag_column]
            except IndexError:
                raise UserError(
                    f"{path}:{i}: {len(cols)} columns; data.token_column={token_column} and "
                    f"data.tag_column={tag_column} need more"
                ) from None
            _check_tags(path, str(i), [t])
            sent_w.append(w)
            sent_t.append(t)
        if sent_w:
            words.append(sent_w)
            tags.append(to_iob2(sent_t))
    if not words:
        raise UserError(f"{path}: no sentences")
    return TokenSet(words, tags)


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
