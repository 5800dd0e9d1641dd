"""Doctor for text classification: the data checks (1, 2) and the Subject for the generic checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from nnrecipe.data.containment import contained_across
from nnrecipe.data.text import TextSet, label_names
from nnrecipe.doctor.checks import FAIL, PASS, WARN, Check, data_check_result, exact_key, near_key, split_overlap
from nnrecipe.doctor.subject import PRETRAINED_BUDGET, Subject
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.reporting.classification import MIN_GROUP_SUPPORT
from nnrecipe.tasks.family import DoctorPlan
from nnrecipe.tasks.text_inputs import text_loader, text_splits, texts
from nnrecipe.tasks.text_models import new_model, safe_lr


def data_check(recipe, train: TextSet, val: TextSet | None, test: TextSet | None, tokenizer) -> Check:
    """1. Class balance, duplicates across splits, empty texts, labels outside the map, truncation."""
    verdicts, notes = [], []
    counts = Counter(train.labels)
    labels = label_names(train.labels)
    imbalance = max(counts.values()) / max(1, min(counts.values()))
    if imbalance > 10:
        verdicts.append(WARN)
        notes.append(f"classes are imbalanced {imbalance:.0f}:1")
    empty = sum(not t.strip() for part in (train, val, test) if part for t in part.texts)
    if empty:
        verdicts.append(WARN)
        notes.append(f"{empty} empty texts")
    figures = []
    train_exact, train_near = {exact_key(t) for t in train.texts}, {near_key(t) for t in train.texts}
    for name, part in (("val", val), ("test", test)):
        if part is None:
            continue
        outside = sorted(set(part.labels) - set(labels))
        if outside:
            verdicts.append(FAIL)
            notes.append(f"{name} has labels outside the training label map: {', '.join(outside[:5])}")
        exact = sum(exact_key(t) in train_exact for t in part.texts) / len(part.texts)
        near = sum(near_key(t) in train_near for t in part.texts) / len(part.texts)
        contained = len(contained_across(part.texts, train.texts)) / len(part.texts)
        figures.append(
            f"{name}: {exact:.1%} exact / {near:.1%} near duplicates of train, {contained:.1%} contain or are "
            "contained in a training text"
        )
        if found := split_overlap(name, exact, near, 0.05, "texts", "after normalising"):
            verdicts.append(found[0])
            notes.append(found[1])
        elif contained > 0.05:
            verdicts.append(WARN)
            notes.append(
                f"{contained:.0%} of {name} texts contain, or sit inside, a training text (sub-phrases of one "
                f"sentence on both sides flatter {name}); hold validation out with data.split_groups: containment"
            )
    if column := recipe.data.group_column:  # fairness by group: each group needs enough examples to judge
        name, part = next((n, p) for n, p in (("val", val), ("test", test), ("train", train)) if p is not None)
        sizes = Counter(part.columns[column])
        small = sorted(g for g, n in sizes.items() if n < MIN_GROUP_SUPPORT)
        figures.append(f"{len(sizes)} groups in {column!r}, the smallest {min(sizes.values())} {name} examples")
        if small:
            verdicts.append(WARN)
            notes.append(f"group(s) {', '.join(small[:5])} of {column!r} have fewer than {MIN_GROUP_SUPPORT} {name} "
                         "examples: their accuracy and rates swing by several points per example")  # fmt: skip
    lengths = [len(ids) for ids in tokenizer(train.texts)["input_ids"]]
    truncated = sum(n > recipe.data.max_length for n in lengths) / len(lengths)
    if truncated > 0.05:
        verdicts.append(WARN)
        notes.append(
            f"{truncated:.0%} of training texts are longer than data.max_length {recipe.data.max_length} and get truncated"
        )
    lengths.sort()
    figure = (
        f"{len(train.texts)} train texts, {len(labels)} labels, largest/smallest class {imbalance:.1f}x; {'; '.join(figures)}; "
        f"{empty} empty; tokens median {lengths[len(lengths) // 2]}, 95th percentile {lengths[int(0.95 * (len(lengths) - 1))]}, "
        f"max {lengths[-1]}; {truncated:.1%} truncated at {recipe.data.max_length}"
    )
    return data_check_result(figure, verdicts, notes)


def batch_check(subject: Subject, tokenizer, labels: list[str], out_dir: Path) -> Check:
    """2. The decoded tokens of one training batch, exactly as the model receives them, with labels."""
    batch = subject.train_batches(1)[0]
    lines = []
    for ids, mask, y in zip(batch["input_ids"][:16], batch["attention_mask"][:16], batch["labels"][:16]):
        tokens = tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
        lines.append(f"[{labels[int(y)]}] {' '.join(tokens)}")
    (out_dir / "batch.txt").write_text("\n".join(lines) + "\n")
    padding = float(1 - batch["attention_mask"].float().mean())
    return Check(
        2,
        "Visualise just before the net",
        PASS,
        f"batch {tuple(batch['input_ids'].shape)}, {padding:.0%} padding; first example: {lines[0][:100]}",
        "Read batch.txt: the labels must match the texts, and the tokens must be words, not [UNK].",
        plots=[],
    )


# Shared by the transformer subjects (text classification and NER).


def first_batches(loader):
    """n -> the first n training batches, running into later epochs if needed (seeded, so repeatable)."""

    def take(n):
        out, epoch = [], 0
        while len(out) < n:
            out += list(loader.batches(epoch))[: n - len(out)]
            epoch += 1
        return out

    return take


def features(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def padded_inputs(tokenizer):
    """The input-independent baseline's inputs: every token replaced by padding."""
    return lambda batch: batch | {"input_ids": torch.full_like(batch["input_ids"], tokenizer.pad_token_id)}


def embedding_leaf(model, batch):
    """Token ids are not differentiable: differentiate the token embeddings instead (check 6)."""
    emb = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    return emb, lambda x: model(inputs_embeds=x, attention_mask=batch["attention_mask"]).logits


def plan(recipe) -> DoctorPlan:
    train, val, test, labels, lora, tokenizer = prepare(recipe)
    subject = make_subject(recipe, train, val, labels, lora, tokenizer)
    return DoctorPlan(
        subject,
        [
            lambda out: data_check(recipe, train, val, test, tokenizer),
            lambda out: batch_check(subject, tokenizer, labels, out),
        ],
    )


def prepare(recipe):
    splits = text_splits(recipe.data)  # a streamed file is read whole here: the data check compares every text
    train, val, test = (
        part.in_memory() if part is not None else None for part in (splits.train, splits.val, splits.test)
    )
    labels = label_names(train.labels)
    lora = recipe.model.peft_options()
    _, tokenizer, _ = new_model(recipe.model.model_copy(update={"finetune": "full"}), labels, "sequence", texts(train))
    return train, val, test, labels, lora, tokenizer


def make_subject(recipe, train: TextSet, val: TextSet | None, labels, lora, tokenizer, max_eval: int = 256) -> Subject:
    ids = {l: i for i, l in enumerate(labels)}
    seed, d = recipe.train.seed, recipe.data

    def make_model():
        seed_everything(seed)
        return new_model(recipe.model, labels, "sequence", texts(train), tokenizer, **lora)[0]

    loader = text_loader(
        tokenizer,
        train,
        labels,
        recipe.train.batch_size,
        d.max_length,
        "cpu",
        shuffle=True,
        seed=seed,
        group_by_length=d.group_by_length,
    )

    train_batches = first_batches(loader)

    evaluation = val or train
    g = torch.Generator().manual_seed(seed)
    pick = sorted(torch.randperm(len(evaluation.labels), generator=g)[:max_eval].tolist())
    evaluation = TextSet(
        [evaluation.texts[i] for i in pick],
        [evaluation.pairs[i] for i in pick] if evaluation.pairs else None,
        [evaluation.labels[i] for i in pick],
    )
    val_batches = list(text_loader(tokenizer, evaluation, labels, 64, d.max_length, "cpu").batches())

    def accuracy(model, batches):
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(**features(b)).logits.argmax(1) == b["labels"]).sum()) for b in batches)
        return correct / sum(len(b["labels"]) for b in batches)

    prior = torch.bincount(torch.tensor([ids[l] for l in train.labels]), minlength=len(labels)).float()
    return Subject(
        make_model=make_model,
        make_optimizer=lambda m, lr: build_optimizer(m, recipe.optim.model_copy(update={"lr": lr})),
        loss=lambda m, b: m(**b).loss,
        logits=lambda m, b: m(**features(b)).logits,
        train_batches=train_batches,
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
