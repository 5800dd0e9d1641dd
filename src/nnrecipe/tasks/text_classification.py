"""Text classification: a pretrained encoder (MiniLM by default) fine-tuned fully, as a frozen linear probe,
or with a peft method (models/hf.py), on the shared engine. Verbs: train, evaluate, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.text import TextLoader, TextSet, label_names, read_text_file
from nnrecipe.engine.loop import Callback, Trainer, console, describe, make_accelerator
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.models.hf import AdaLoraSchedule, build, load_trained, parameter_counts
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.reporting.plots import plot_confusion
from nnrecipe.runs import Run
from nnrecipe.tasks._fit import evaluate_split, finish_transformer_run, fit_run


class TextClassifier:
    """The engine's TrainTask: the model computes its own cross-entropy from `labels`."""

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        return model(**batch).loss, len(batch["labels"])

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        probs, labels = predict_probs(model, loader)
        return {
            "loss": F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item(),
            "accuracy": (probs.argmax(1) == labels).float().mean().item(),
        }


@torch.no_grad()
def predict_probs(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in loader.batches():
        labels.append(batch.pop("labels").cpu())
        probs.append(model(**batch).logits.float().softmax(1).cpu())
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def _encode(tokenizer, part: TextSet, max_length: int):
    enc = tokenizer(part.texts, part.pairs, truncation=True, max_length=max_length)
    return enc["input_ids"], enc.get("token_type_ids")


def _loader(tokenizer, part: TextSet, label_ids: dict[str, int], bs: int, max_length: int, device, **kw) -> TextLoader:
    unknown = sorted(set(part.labels) - set(label_ids))
    if unknown:
        raise UserError(f"labels {', '.join(unknown[:5])} are not in the run's label map ({', '.join(label_ids)})")
    ids, types = _encode(tokenizer, part, max_length)
    return TextLoader(
        ids, [label_ids[l] for l in part.labels], bs, tokenizer.pad_token_id, device=device, type_ids=types, **kw
    )


def _read(recipe, path: Path) -> TextSet:
    d = recipe.data
    return read_text_file(path, d.format, d.text_column, d.label_column, d.text_pair_column)


def _splits(recipe) -> tuple[TextSet, TextSet | None, TextSet | None]:
    from sklearn.model_selection import train_test_split

    d = recipe.data
    train = _read(recipe, d.train)
    if d.limit:
        train = TextSet(
            train.texts[: d.limit], train.pairs[: d.limit] if train.pairs else None, train.labels[: d.limit]
        )
    val = _read(recipe, d.val) if d.val else None
    if val is None and d.val_fraction > 0:
        idx = np.arange(len(train.labels))
        counts = {l: train.labels.count(l) for l in set(train.labels)}
        keep, held = train_test_split(
            idx,
            test_size=d.val_fraction,
            random_state=d.split_seed,
            stratify=train.labels if min(counts.values()) >= 2 else None,
        )
        pick = lambda ix: TextSet(
            [train.texts[i] for i in ix],
            [train.pairs[i] for i in ix] if train.pairs else None,  # noqa: E731
            [train.labels[i] for i in ix],
        )
        train, val = pick(sorted(keep)), pick(sorted(held))
    test = _read(recipe, d.test) if d.test else None
    return train, val, test


def train(
    recipe, run: Run, *, resume: bool = False, callbacks: list[Callback] = (), progress: bool | None = None
) -> dict[str, Any]:
    seed_everything(recipe.train.seed)
    acc = make_accelerator(recipe.train, cpu_bf16=True)
    train_set, val_set, test_set = _splits(recipe)
    labels = label_names(train_set.labels)
    t = recipe.train
    opts = recipe.model.peft_options() | {
        "total_steps": t.epochs * -(-len(train_set.labels) // t.batch_size) // t.grad_accum_steps
    }
    model, tokenizer = build(recipe.model.name, labels, recipe.model.finetune, opts)
    trainable, total = parameter_counts(model)
    console.print(
        f"{recipe.model.name} ({recipe.model.finetune}): {trainable:,} trainable of {total:,} parameters "
        f"({trainable / total:.2%}); {len(train_set.labels):,} train / {len(val_set.labels) if val_set else 0:,} val "
        f"examples, {len(labels)} labels; {describe(acc)}",
        soft_wrap=True,
    )
    run.update_meta(
        status="running",
        task="text_classification",
        text={
            "labels": labels,
            "model": recipe.model.name,
            "finetune": recipe.model.finetune,
            "peft": opts,
            "max_length": recipe.data.max_length,
            "trainable_parameters": trainable,
            "total_parameters": total,
        },
    )
    label_ids = {l: i for i, l in enumerate(labels)}
    d = recipe.data
    train_loader = _loader(
        tokenizer,
        train_set,
        label_ids,
        t.batch_size,
        d.max_length,
        acc.device,
        shuffle=True,
        seed=t.seed,
        group_by_length=d.group_by_length,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    val_loader = (
        _loader(tokenizer, val_set, label_ids, t.eval_batch_size, d.max_length, acc.device) if val_set else None
    )
    if recipe.model.finetune == "adalora":
        callbacks = [*callbacks, AdaLoraSchedule(model)]
    tracker = Tracker(run.dir, recipe.track.tensorboard, recipe.track.wandb, recipe.model_dump(mode="json"))
    trainer = Trainer(
        accelerator=acc,
        model=model,
        optimizer=build_optimizer(model, recipe.optim),
        task=TextClassifier(),
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
    return load_trained(run, "sequence", device)


def _report(run: Run, recipe, part: TextSet, split: str, device, source: str | None = None) -> dict[str, Any]:
    model, tokenizer, meta = inference_model(run, device)
    labels = meta["labels"]
    loader = _loader(
        tokenizer, part, {l: i for i, l in enumerate(labels)}, recipe.train.eval_batch_size, meta["max_length"], device
    )
    probs, y = predict_probs(model, loader)
    pred = probs.argmax(1).numpy()
    y = y.numpy()
    summary = classification_summary(y, pred, labels)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs.numpy()[wrong, pred[wrong]])][:10]
    extra: dict[str, Any] = {
        "source": source or f"{split} split",
        "plots": [],
        "confidently_wrong": [
            {
                "text": part.texts[i],
                "label": labels[y[i]],
                "predicted": labels[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
            for i in worst
        ],
    }
    if recipe.track.plots:
        tag = split.replace("/", "_").replace(":", "_")
        plot_confusion(summary["confusion_matrix"], labels, run.plots_dir / f"confusion_{tag}.png")
        extra["plots"] = [f"plots/confusion_{tag}.png"] + (
            ["plots/curves.png"] if (run.plots_dir / "curves.png").exists() else []
        )
    path = write_report(run.dir, split, summary, extra)
    console.print(
        f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} examples\n" + summary_table(summary)
    )
    console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
    return summary


def evaluate(run: Run, split: str = "test", data_path: str | None = None) -> dict[str, Any]:
    return evaluate_split(run, split, data_path, _read, _splits, _report)


def predict(run: Run, texts: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    model, tokenizer, meta = inference_model(run)
    labels = meta["labels"]
    if not texts:
        return []
    loader = TextLoader(
        tokenizer(texts, truncation=True, max_length=meta["max_length"])["input_ids"],
        [0] * len(texts),
        64,
        tokenizer.pad_token_id,
    )
    probs, _ = predict_probs(model, loader)
    out = []
    for text, p in zip(texts, probs):
        top = p.topk(min(top_k, len(labels)))
        out.append(
            {
                "text": text,
                "label": labels[int(top.indices[0])],
                "confidence": float(top.values[0]),
                "probabilities": {labels[i]: float(v) for i, v in enumerate(p)},
            }
        )
    return out
