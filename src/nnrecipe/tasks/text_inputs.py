"""How labelled text and token files become batches for the text families: reading, holding out
validation, tokenising once, batching with dynamic padding. Shared by the families (text and token
classification, embeddings) and their doctors."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from nnrecipe.data.containment import containment_groups, grouped_holdout
from nnrecipe.data.splits import holdout
from nnrecipe.data.stream import prefetched
from nnrecipe.data.text import StreamedTextLoader, TextLoader, TextSet, read_text_file
from nnrecipe.data.tokens import Encoded, TokenSet, encode_words, read_token_file
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError, existing_data_files
from nnrecipe.tasks.family import Splits
from nnrecipe.tasks.text_recipes import SPLIT_MODES, TextData, TokenData

TOKENISE_CHUNK = 8192  # texts tokenised at a time: a fast tokenizer's full output for all rows at once (offsets,
# token strings) peaked at 1.7 GB for a 29 MB JSONL file of 200,000 short reviews; only the ids are kept


def text_loader(tokenizer, part: TextSet, labels: list[str], bs: int, max_length: int, device, **kw) -> TextLoader:
    """Tokenised once (a streamed set: batch by batch as drawn), batched with dynamic padding; labels outside
    `labels` are a clear error."""
    ids = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(part.labels) - set(ids))
    if unknown:
        raise UserError(f"labels {', '.join(unknown[:5])} are not in the run's label map ({', '.join(labels)})")
    label_ids = [ids[x] for x in part.labels]
    if part.streamed:
        return StreamedTextLoader(tokenizer, part, label_ids, bs, max_length, device=device, **kw)
    input_ids, types = [], []
    for start in range(0, len(part), TOKENISE_CHUNK):
        end = start + TOKENISE_CHUNK
        enc = tokenizer(part.texts[start:end], part.pairs[start:end] if part.pairs else None, truncation=True,
                        max_length=max_length)  # fmt: skip
        input_ids += [torch.tensor(e) for e in enc["input_ids"]]
        types += [torch.tensor(t) for t in enc.get("token_type_ids") or []]
    return TextLoader(input_ids, label_ids, bs, tokenizer.pad_token_id, device=device, type_ids=types or None, **kw)


# A text file held in memory (its strings, the label list, the token ids as one tensor per row) took 18-25x its
# bytes on disk at the peak: JSONL files of short reviews tokenised for MiniLM raised the peak resident memory by
# 513 MB (29 MB, 200,000 rows) and 220 MB (8.7 MB, 60,000 rows; tests/test_text_stream.py).
MEMORY_PER_FILE_BYTE = 25
# NER: CoNLL-2003's 3.1 MB train file read, tokenised for MiniLM and batched raised the peak by 114 MB (36x)
MEMORY_PER_CONLL_BYTE = 36


def read_texts(data: TextData, path: Path) -> TextSet:
    return read_text_file(
        path, data.format, data.text_column, data.label_column, data.text_pair_column, data.other_columns(),
        stream=streams(data, path),
    )  # fmt: skip


def streams(data: TextData | TokenData, path: Path, per_byte: int = MEMORY_PER_FILE_BYTE) -> bool:
    """data.stream, with auto resolved from the file's size on disk (times `per_byte`, the measured cost of
    holding a byte of it in memory) against data.memory_cap_mb (printed)."""
    if data.stream != "auto":
        return bool(data.stream)
    try:
        mb = Path(path).stat().st_size * per_byte / 2**20
    except OSError:
        return False  # the reader names the missing file
    if mb <= data.memory_cap_mb:
        return False
    console.print(
        f"streaming {path}: held in memory they would take about {mb:,.0f} MB, over "
        f"data.memory_cap_mb {data.memory_cap_mb:,} (data.stream: false keeps them in memory)",
        soft_wrap=True,
    )
    return True


def text_splits(data: TextData) -> Splits:
    """The data section's files; validation held out of train (stratified) when no file is given."""
    existing_data_files(data)
    train = read_texts(data, data.train)
    if data.limit:
        train = train.subset(range(min(data.limit, len(train))))
    val = read_texts(data, data.val) if data.val else None
    meta = {}
    if val is None and data.val_fraction > 0:
        if data.split_groups in SPLIT_MODES:
            mode = "containment"
            if train.streamed and data.split_groups == "containment":
                raise UserError("data.split_groups: containment compares every training text with every other, "
                                "in memory; with data.stream use auto (a row split), none or a column")  # fmt: skip
            contained = data.split_groups != "none" and not train.streamed
            groups = containment_groups(train.texts) if contained else None
        else:  # a column: rows with one value stay together
            mode = f"column {data.split_groups}"
            index: dict[str, int] = {}
            groups = [index.setdefault(v, len(index)) for v in train.columns[data.split_groups]]
            if len(index) < 2:
                raise UserError(f"data.split_groups: column {data.split_groups!r} holds one value; a grouped "
                                "split needs two or more (or set split_groups: auto)")  # fmt: skip
        if train.streamed and groups is None and data.split_groups == "auto":
            console.print("data.stream: validation held out by rows (texts that contain one another are not "
                          "looked for in a streamed file; split_groups: a column keeps groups together)")  # fmt: skip
        linked = len(groups) - len(set(groups)) if groups is not None else 0  # texts sharing a group
        if linked and len(set(groups)) > 1:
            kept, held = grouped_holdout(groups, data.val_fraction, data.split_seed, train.labels)
            meta = {"split_groups": {"mode": mode, "groups": len(set(groups)), "linked_texts": linked}}
        else:
            kept, held = holdout(len(train), data.val_fraction, data.split_seed, train.labels)
        train, val = train.subset(kept), train.subset(held)
    test = read_texts(data, data.test) if data.test else None
    if data.classes is not None:
        train, val, test = (
            kept_labels(p, data.classes, name) for p, name in ((train, "train"), (val, "val"), (test, "test"))
        )
    return Splits(train, val, test, meta=meta)


def kept_labels(part: TextSet | None, classes: list[str], name: str) -> TextSet | None:
    """The rows of `part` whose label is one of `classes` (None when none are; the train split must have some)."""
    if part is None:
        return None
    kept = part.subset(i for i, label in enumerate(part.labels) if label in classes)
    if len(kept):
        return kept
    if name == "train":
        raise UserError(f"data.classes: no training rows labelled {', '.join(classes)} "
                        f"(the labels there: {', '.join(sorted(set(part.labels))[:20])})")  # fmt: skip
    return None


class WordLoader(TextLoader):
    """A TextLoader that also knows, per example, which word each labelled position stands for."""

    def __init__(self, encoded: Encoded, batch_size: int, pad_id: int, **kw):
        super().__init__(encoded.input_ids, encoded.labels, batch_size, pad_id, **kw)
        self.encoded = encoded

    def tagged_batches(self) -> Iterator[tuple[dict[str, torch.Tensor], list[list[int]], list[int]]]:
        """Each batch in order with, per sentence, the word of each labelled position and the word count."""
        i, enc = 0, self.encoded
        for batch in self.batches():
            n = len(batch["labels"])
            yield batch, enc.word_index[i : i + n], enc.n_words[i : i + n]
            i += n


class StreamedWordLoader(TextLoader):
    """A WordLoader over a streamed TokenSet: a batch's sentences are read, tokenised and aligned when it is
    drawn (a thread makes the next two while one trains). Grouping by length takes one tokenising pass that
    keeps each sentence's sub-token count alone, so the batches are the in-memory loader's, tensor for tensor."""

    def __init__(
        self, tokenizer, part: TokenSet, tag_ids: dict[str, int], batch_size: int, max_length: int, *,
        device="cpu", shuffle=False, seed=0, group_by_length=False, rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        self.tokenizer, self.part, self.tag_ids, self.max_length = tokenizer, part, tag_ids, max_length
        grouped = group_by_length and shuffle
        self.lengths = self._counts() if grouped else [0] * len(part)
        self.per_token, self.type_ids = True, None
        self._batching(batch_size, tokenizer.pad_token_id, device, shuffle, seed, group_by_length, rank, world_size)

    def _counts(self, chunk: int = 1024) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(self.part), chunk):
            words = self.part.words.read(range(start, min(start + chunk, len(self.part))))
            enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
            counts += [len(ids) for ids in enc["input_ids"]]
        return counts

    def _encoded(self, idx: list[int]) -> tuple[dict[str, torch.Tensor], Encoded]:
        tags = [self.part.tags[i] for i in idx]
        enc = encode_words(self.tokenizer, self.part.words.read(idx), tags, self.tag_ids, self.max_length)
        ids = [torch.tensor(e, dtype=torch.long) for e in enc.input_ids]
        labels = [torch.tensor(row, dtype=torch.long) for row in enc.labels]
        return self._collate(ids, [len(e) for e in ids], labels, None), enc

    def _drawn(self, epoch: int, start: int) -> Iterator[tuple[dict[str, torch.Tensor], Encoded]]:
        order = self._order(epoch)
        return prefetched(lambda i: self._encoded(order[i]), start, len(order))

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for batch, _ in self._drawn(epoch, start):
            yield batch

    def tagged_batches(self) -> Iterator[tuple[dict[str, torch.Tensor], list[list[int]], list[int]]]:
        for batch, enc in self._drawn(0, 0):
            yield batch, enc.word_index, enc.n_words


def read_tokens(data: TokenData, path: Path) -> TokenSet:
    return read_token_file(
        path, data.format, data.token_column, data.tag_column, data.tokens_key, data.tags_key,
        stream=streams(data, path, MEMORY_PER_CONLL_BYTE),
    )  # fmt: skip


def token_splits(data: TokenData) -> Splits:
    """The data section's files; validation held out of train when no file is given."""
    existing_data_files(data)
    train = read_tokens(data, data.train)
    if data.limit:
        train = train.subset(range(min(data.limit, len(train))))
    val = read_tokens(data, data.val) if data.val else None
    if val is None and data.val_fraction > 0:
        kept, held = holdout(len(train), data.val_fraction, data.split_seed)
        train, val = train.subset(kept), train.subset(held)
    test = read_tokens(data, data.test) if data.test else None
    return Splits(train, val, test)


def word_loader(
    tokenizer, part: TokenSet, tags: list[str], bs: int, max_length: int, device, **kw
) -> WordLoader | StreamedWordLoader:
    """Tokenised and aligned once (a streamed set: batch by batch as drawn); tags outside `tags` are a clear error."""
    tag_ids = {t: i for i, t in enumerate(tags)}
    unknown = sorted({t for sent in part.tags for t in sent} - set(tag_ids))
    if unknown:
        raise UserError(f"tags {', '.join(unknown[:5])} are not in the run's tag set ({', '.join(tags)})")
    if part.streamed:
        return StreamedWordLoader(tokenizer, part, tag_ids, bs, max_length, device=device, **kw)
    encoded = encode_words(tokenizer, part.words, part.tags, tag_ids, max_length)
    return WordLoader(encoded, bs, tokenizer.pad_token_id, device=device, **kw)


def texts(part: TextSet) -> Iterable[str]:
    """The raw text of a classification split (both texts of a pair), to fit a tokenizer on (a streamed
    split's read from its file as iterated)."""
    if part.streamed:
        return itertools.chain(part.texts, part.pairs or ())
    return part.texts + (part.pairs or [])


def sentences(part: TokenSet) -> Iterable[str]:
    """The words of an NER split as one line per sentence, to fit a tokenizer on (a streamed split's read
    from its file as iterated)."""
    lines = (" ".join(words) for words in part.words)
    return lines if part.streamed else list(lines)
