"""Token classification (NER): a pretrained encoder with a per-token head, fine-tuned on the shared engine.
Labels sit on each word's first sub-token; predictions are read back per word and scored per entity.
Verbs: train, evaluate, predict (entities with character offsets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrecipe.data.text import TextLoader
from nnrecipe.data.tokens import Encoded, TokenSet, encode_words, entities, read_token_file, split_words, tag_names
from nnrecipe.engine.loop import Callback, Trainer, console, describe, make_accelerator
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.models.hf import AdaLoraSchedule, build, load_trained, parameter_counts
from nnrecipe.reporting.ner import ner_summary, ner_table, write_ner_report
from nnrecipe.runs import Run
from nnrecipe.tasks._fit import evaluate_split, finish_transformer_run, fit_run


class WordLoader(TextLoader):
    """A TextLoader that also knows, per example, which word each labelled position stands for."""

    def __init__(self, encoded: Encoded, batch_size: int, pad_id: int, **kw):
        super().__init__(encoded.input_ids, encoded.labels, batch_size, pad_id, **kw)
        self.encoded = encoded


class NerTask:
    """The engine's TrainTask: token cross-entropy (the model skips -100), validation scored per entity."""

    def __init__(self, tags: list[str], gold: list[list[str]] | None = None):
        self.tags, self.gold = tags, gold

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        return model(**batch).loss, len(batch["labels"])

    def evaluate(self, model: nn.Module, loader: WordLoader) -> dict[str, float]:
        pred, loss = predict_tags(model, loader, self.tags)
        s = ner_summary(self.gold, pred)
        return {
            "loss": loss,
            "f1": s["f1"],
            "precision": s["precision"],
            "recall": s["recall"],
            "token_accuracy": s["token_accuracy"],
        }


@torch.no_grad()
def predict_tags(model: nn.Module, loader: WordLoader, tags: list[str]) -> tuple[list[list[str]], float]:
    """Per word: the tag predicted at its first sub-token ("O" for words the tokenizer cut off), and the
    mean token loss where labels exist. The loader must not shuffle."""
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    loss_sum, count = 0.0, 0
    enc = loader.encoded
    for batch in loader.batches():
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        keep = labels != -100
        if keep.any():
            loss_sum += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
        best = logits.argmax(-1).cpu()
        for row, k in zip(best, keep.cpu()):
            i = len(out)
            words = ["O"] * enc.n_words[i]
            for w, t in zip(enc.word_index[i], row[k].tolist()):
                words[w] = tags[t]
            out.append(words)
    model.train(was_training)
    return out, loss_sum / max(1, count)


def _read(recipe, path: Path) -> TokenSet:
    d = recipe.data
    return read_token_file(path, d.format, d.token_column, d.tag_column, d.tokens_key, d.tags_key)


def _splits(recipe) -> tuple[TokenSet, TokenSet | None, TokenSet | None]:
    d = recipe.data
    train = _read(recipe, d.train)
    if d.limit:
        train = TokenSet(train.words[: d.limit], train.tags[: d.limit])
    val = _read(recipe, d.val) if d.val else None
    if val is None and d.val_fraction > 0:
        order = np.random.default_rng(d.split_seed).permutation(len(train.words))
        n_val = max(1, round(d.val_fraction * len(order)))
        pick = lambda ix: TokenSet([train.words[i] for i in sorted(ix)], [train.tags[i] for i in sorted(ix)])  # noqa: E731
        train, val = pick(order[n_val:]), pick(order[:n_val])
    test = _read(recipe, d.test) if d.test else None
    return train, val, test


def _loader(tokenizer, part: TokenSet, tags: list[str], bs: int, max_length: int, device, **kw) -> WordLoader:
    tag_ids = {t: i for i, t in enumerate(tags)}
    unknown = sorted({t for sent in part.tags for t in sent} - set(tag_ids))
    if unknown:
        raise UserError(f"tags {', '.join(unknown[:5])} are not in the run's tag set ({', '.join(tags)})")
    return WordLoader(
        encode_words(tokenizer, part.words, part.tags, tag_ids, max_length),
        bs,
        tokenizer.pad_token_id,
        device=device,
        **kw,
    )


def train(
    recipe, run: Run, *, resume: bool = False, callbacks: list[Callback] = (), progress: bool | None = None
) -> dict[str, Any]:
    seed_everything(recipe.train.seed)
    acc = make_accelerator(recipe.train, cpu_bf16=True)
    train_set, val_set, test_set = _splits(recipe)
    tags = tag_names(train_set.tags + (val_set.tags if val_set else []))
    d, t, m = recipe.data, recipe.train, recipe.model
    steps = t.epochs * -(-len(train_set.words) // t.batch_size) // t.grad_accum_steps
    opts = m.peft_options() | {"total_steps": steps}
    model, tokenizer = build(m.name, tags, m.finetune, opts, head="token")
    trainable, total = parameter_counts(model)
    console.print(
        f"{m.name} ({m.finetune}): {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%}); "
        f"{len(train_set.words):,} train / {len(val_set.words) if val_set else 0:,} val sentences, "
        f"{(len(tags) - 1) // 2} entity types; {describe(acc)}",
        soft_wrap=True,
    )
    run.update_meta(
        status="running",
        task="token_classification",
        text={
            "labels": tags,
            "model": m.name,
            "finetune": m.finetune,
            "peft": opts,
            "max_length": d.max_length,
            "trainable_parameters": trainable,
            "total_parameters": total,
        },
    )
    train_loader = _loader(
        tokenizer,
        train_set,
        tags,
        t.batch_size,
        d.max_length,
        acc.device,
        shuffle=True,
        seed=t.seed,
        group_by_length=d.group_by_length,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    val_loader = _loader(tokenizer, val_set, tags, t.eval_batch_size, d.max_length, acc.device) if val_set else None
    if m.finetune == "adalora":
        callbacks = [*callbacks, AdaLoraSchedule(model)]
    tracker = Tracker(run.dir, recipe.track.tensorboard, recipe.track.wandb, recipe.model_dump(mode="json"))
    trainer = Trainer(
        accelerator=acc,
        model=model,
        optimizer=build_optimizer(model, recipe.optim),
        task=NerTask(tags, val_set.tags if val_set else None),
        train_loader=train_loader,
        val_loader=val_loader,
        train_cfg=t,
        schedule_cfg=recipe.schedule,
        run_dir=run.dir,
        tracker=tracker,
        callbacks=list(callbacks),
        progress=recipe.track.progress if progress is None else progress,
    )
    result = fit_run(run, trainer, tracker, resume, recipe.track.plots)
    return finish_transformer_run(run, recipe, acc, result, val_set, test_set, inference_model, _report)


def inference_model(run: Run, device="cpu"):
    return load_trained(run, "token", device)


def _report(run: Run, recipe, part: TokenSet, split: str, device, source: str | None = None) -> dict[str, Any]:
    model, tokenizer, meta = inference_model(run, device)
    tags = meta["labels"]
    loader = _loader(tokenizer, part, tags, recipe.train.eval_batch_size, meta["max_length"], device)
    pred, _ = predict_tags(model, loader, tags)
    summary = ner_summary(part.tags, pred)
    enc = loader.encoded
    truncated = sum(n - (max(ix) + 1 if ix else 0) for n, ix in zip(enc.n_words, enc.word_index))
    shown = lambda words, seq: ", ".join(f"{' '.join(words[a:b])}/{k}" for k, a, b in entities(seq)) or "-"  # noqa: E731
    errors = [
        {"text": " ".join(w), "gold": shown(w, g), "predicted": shown(w, p)}
        for w, g, p in zip(part.words, part.tags, pred)
        if entities(g) != entities(p)
    ][:10]
    path = write_ner_report(
        run.dir,
        split,
        summary,
        {
            "source": source or f"{split} split",
            "truncated_words": truncated,
            "errors": errors,
            "plots": ["plots/curves.png"] if (run.plots_dir / "curves.png").exists() else [],
        },
    )
    console.print(
        f"\n{split} entity F1 {summary['f1']:.4f} (precision {summary['precision']:.4f}, recall {summary['recall']:.4f}), "
        f"token accuracy {summary['token_accuracy']:.4f} on {summary['sentences']} sentences\n" + ner_table(summary)
    )
    console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
    return summary


def evaluate(run: Run, split: str = "test", data_path: str | None = None) -> dict[str, Any]:
    return evaluate_split(run, split, data_path, _read, _splits, _report)


def tag_texts(model, tokenizer, tags: list[str], max_length: int, texts: list[str]) -> list[dict[str, Any]]:
    """Raw texts -> entities with character offsets: split into words, tag them, group B-/I- runs."""
    spans = [split_words(t) for t in texts]
    words = [[w for w, _, _ in s] or [""] for s in spans]
    loader = WordLoader(encode_words(tokenizer, words, None, {}, max_length), 64, tokenizer.pad_token_id)
    pred, _ = predict_tags(model, loader, tags)
    out = []
    for text, span, seq in zip(texts, spans, pred):
        found = [
            {"text": text[span[a][1] : span[b - 1][2]], "type": kind, "start": span[a][1], "end": span[b - 1][2]}
            for kind, a, b in entities(seq[: len(span)])
        ]
        out.append({"text": text, "entities": found})
    return out


def predict(run: Run, texts: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    model, tokenizer, meta = inference_model(run)
    return tag_texts(model, tokenizer, meta["labels"], meta["max_length"], texts) if texts else []
