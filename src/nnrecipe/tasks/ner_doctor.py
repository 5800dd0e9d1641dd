"""Doctor for NER: the data checks (1, 2) and the Subject for the generic checks, where a labelled
token (a word's first sub-token) plays the part of an example."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from nnrecipe.data.containment import contained_across
from nnrecipe.data.tokens import IGNORE, TokenSet, encode_words, entities, tag_names
from nnrecipe.doctor.checks import FAIL, PASS, WARN, Check, data_check_result, exact_key, near_key, split_overlap
from nnrecipe.doctor.subject import PRETRAINED_BUDGET, Subject
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.tasks.family import DoctorPlan
from nnrecipe.tasks.text_doctor import embedding_leaf, features, first_batches, padded_inputs
from nnrecipe.tasks.text_inputs import sentences, token_splits, word_loader
from nnrecipe.tasks.text_models import new_model, safe_lr


def data_check(recipe, train: TokenSet, val: TokenSet | None, test: TokenSet | None, tokenizer) -> Check:
    """1. Entity types and their balance, sentences repeated across splits, tags outside the map, truncation."""
    verdicts, notes, figures = [], [], []
    types = Counter(kind for sent in train.tags for kind, _, _ in entities(sent))
    if not types:
        verdicts.append(FAIL)
        notes.append("the training data has no entities at all")
    elif max(types.values()) / min(types.values()) > 20:
        verdicts.append(WARN)
        notes.append(f"entity types are imbalanced {max(types.values()) / min(types.values()):.0f}:1")
    tags = set(tag_names(train.tags))
    # Only sentences of 6+ words are compared: short ones (datelines, "Results", scores) repeat legitimately.
    joined = [" ".join(w) for w in train.words if len(w) >= 6]
    train_exact, train_near = {exact_key(t) for t in joined}, {near_key(t) for t in joined}
    for name, part in (("val", val), ("test", test)):
        if part is None:
            continue
        outside = sorted({t for sent in part.tags for t in sent} - tags)
        if outside:
            verdicts.append(FAIL)
            notes.append(f"{name} has tags the training data never shows: {', '.join(outside[:5])}")
        texts = [" ".join(w) for w in part.words if len(w) >= 6] or [""]
        exact = sum(exact_key(t) in train_exact for t in texts) / len(texts)
        near = sum(near_key(t) in train_near for t in texts) / len(texts)
        contained = len(contained_across(texts, joined)) / len(texts)
        figures.append(f"{name}: {exact:.1%} exact / {near:.1%} near duplicates of train, {contained:.1%} contain or "
                       "are contained in a training sentence (sentences of 6+ words)")  # fmt: skip
        # News NER repeats templated lines (headlines, table headers, score lines: 2.4% of CoNLL-2003 valid's
        # 6+ word sentences are in train); only a larger share fails.
        if found := split_overlap(name, exact, near, 0.05, "sentences", "after normalising", exact_limit=0.10):
            verdicts.append(found[0])
            notes.append(found[1])
        elif contained > 0.05:
            verdicts.append(WARN)
            notes.append(f"{contained:.0%} of {name} sentences contain, or sit inside, a training sentence (one "
                         f"sentence cut into pieces on both sides flatters {name}); give data.val a separate file")  # fmt: skip
    lengths = sorted(len(ids) for ids in tokenizer(train.words, is_split_into_words=True)["input_ids"])
    truncated = sum(n > recipe.data.max_length for n in lengths) / len(lengths)
    if truncated > 0.01:
        verdicts.append(WARN)
        notes.append(
            f"{truncated:.1%} of training sentences exceed data.max_length {recipe.data.max_length}: their last "
            "words are never trained on and are predicted O"
        )
    figure = (
        f"{len(train.words)} train sentences, entities per type {dict(sorted(types.items()))}; {'; '.join(figures)}; "
        f"sub-tokens median {lengths[len(lengths) // 2]}, max {lengths[-1]}; {truncated:.1%} truncated at "
        f"{recipe.data.max_length}"
    )
    return data_check_result(figure, verdicts, notes)


def batch_check(subject: Subject, tokenizer, tags: list[str], out_dir: Path) -> Check:
    """2. One training batch decoded: each sub-token with the tag it is trained on (or . for -100)."""
    batch = subject.train_batches(1)[0]
    lines = []
    for ids, mask, y in zip(batch["input_ids"][:16], batch["attention_mask"][:16], batch["labels"][:16]):
        keep = mask.bool()
        pieces = tokenizer.convert_ids_to_tokens(ids[keep].tolist())
        lines.append(" ".join(f"{p}/{tags[int(t)] if t != IGNORE else '.'}" for p, t in zip(pieces, y[keep].tolist())))
    (out_dir / "batch.txt").write_text("\n".join(lines) + "\n")
    padding = float(1 - batch["attention_mask"].float().mean())
    return Check(
        2,
        "Visualise just before the net",
        PASS,
        f"batch {tuple(batch['input_ids'].shape)}, {padding:.0%} padding; first example: {lines[0][:100]}",
        "Read batch.txt: each word's first piece carries its tag, the other pieces '.', and the tags must fit the words.",
    )


def plan(recipe) -> DoctorPlan:
    train, val, test, tags, tokenizer = prepare(recipe)
    subject = make_subject(recipe, train, val, tags, tokenizer)
    return DoctorPlan(
        subject,
        [
            lambda out: data_check(recipe, train, val, test, tokenizer),
            lambda out: batch_check(subject, tokenizer, tags, out),
        ],
    )


def prepare(recipe):
    splits = token_splits(recipe.data)
    # its checks tokenise and compare whole splits: a streamed file's words are read into memory for them
    train, val, test = (p.in_memory() if p is not None else None for p in (splits.train, splits.val, splits.test))
    tags = tag_names(train.tags + (val.tags if val else []))
    _, tokenizer, _ = new_model(recipe.model.model_copy(update={"finetune": "full"}), tags, "token", sentences(train))
    return train, val, test, tags, tokenizer


def make_subject(
    recipe, train: TokenSet, val: TokenSet | None, tags: list[str], tokenizer, max_eval: int = 256
) -> Subject:
    ids = {t: i for i, t in enumerate(tags)}
    seed, d = recipe.train.seed, recipe.data
    opts = recipe.model.peft_options() | {"total_steps": 200}

    def make_model():
        seed_everything(seed)
        return new_model(recipe.model, tags, "token", sentences(train), tokenizer, **opts)[0]

    loader = word_loader(
        tokenizer,
        train,
        tags,
        recipe.train.batch_size,
        d.max_length,
        "cpu",
        shuffle=True,
        seed=seed,
        group_by_length=d.group_by_length,
    )

    evaluation = val or train
    g = torch.Generator().manual_seed(seed)
    pick = sorted(torch.randperm(len(evaluation.words), generator=g)[:max_eval].tolist())
    evaluation = TokenSet([evaluation.words[i] for i in pick], [evaluation.tags[i] for i in pick])
    val_batches = list(word_loader(tokenizer, evaluation, tags, 64, d.max_length, "cpu").batches())

    def accuracy(model, batches):
        """Tag accuracy over labelled tokens."""
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for b in batches:
                keep = b["labels"] != IGNORE
                correct += int((model(**features(b)).logits.argmax(-1)[keep] == b["labels"][keep]).sum())
                total += int(keep.sum())
        return correct / max(1, total)

    enc = encode_words(tokenizer, train.words, train.tags, ids, d.max_length)
    prior = torch.bincount(
        torch.tensor([l for row in enc.labels for l in row if l != IGNORE]), minlength=len(tags)
    ).float()
    return Subject(
        make_model=make_model,
        make_optimizer=lambda m, lr: build_optimizer(m, recipe.optim.model_copy(update={"lr": lr})),
        loss=lambda m, b: m(**b).loss,
        logits=lambda m, b: m(**features(b)).logits,
        train_batches=first_batches(loader),
        val_batches=val_batches,
        zero_inputs=padded_inputs(tokenizer),
        inputs=lambda b: b["input_ids"],
        with_inputs=lambda b, x: {k: v[: len(x)] for k, v in b.items()},
        accuracy=accuracy,
        class_prior=prior / prior.sum(),
        recipe_lr=recipe.optim.lr,
        leaf_inputs=embedding_leaf,
        safe_lr=safe_lr(recipe.model),
        budget=PRETRAINED_BUDGET,
    )
