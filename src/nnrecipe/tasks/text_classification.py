"""Text classification: a pretrained encoder (MiniLM by default) fine-tuned fully, as a frozen linear probe,
or with a peft method (models/hf.py), on the shared engine; accuracy reports, export, serving, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.splits import spread_sample
from nnrecipe.data.text import TextLoader, TextSet, label_names
from nnrecipe.engine.loop import console
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.reporting.plots import plot_confusion
from nnrecipe.runs import Run
from nnrecipe.tasks import outputs
from nnrecipe.tasks.continual_parts import class_stages
from nnrecipe.tasks.family import DoctorPlan, Metric, Splits, Stages, register_family
from nnrecipe.tasks.serving import autocast
from nnrecipe.tasks.supervised import plot_paths, reliability_plot, scoring_bar, split_tag
from nnrecipe.tasks.text_doctor import plan as doctor_plan
from nnrecipe.tasks.text_inputs import read_texts, text_loader, text_splits, texts
from nnrecipe.tasks.text_recipes import TextRecipe
from nnrecipe.tasks.transformer import TransformerFamily, TransformerPredictor


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
def predict_probs(model: nn.Module, loader, advance=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and labels for every batch; `advance(n)` is told of each batch's texts."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in loader.batches():
        labels.append(batch.pop("labels").cpu())
        probs.append(model(**batch).logits.float().softmax(1).cpu())
        if advance is not None:
            advance(len(labels[-1]))
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


@register_family
class TextClassification(TransformerFamily):
    name = "text_classification"
    recipe = TextRecipe
    metric = Metric("accuracy", "max")
    output = outputs.CLASSIFICATION
    card_metrics = ("accuracy", "examples")
    predict_inputs = "texts"
    head = "sequence"

    def splits(self, recipe: TextRecipe) -> Splits:
        return text_splits(recipe.data)

    def labels_of(self, splits: Splits) -> list[str]:
        return label_names(splits.train.labels)

    def loader(self, tokenizer, part: TextSet, labels: list[str], batch_size: int, max_length: int, device, **kw):
        return text_loader(tokenizer, part, labels, batch_size, max_length, device, **kw)

    def train_task(self, labels: list[str], splits: Splits) -> TextClassifier:
        return TextClassifier()

    def texts_of(self, part: TextSet) -> list[str]:
        return texts(part)

    def memory_rows(self, part: TextSet) -> list[dict[str, Any]]:
        pairs = part.pairs or [None] * len(part)
        return [{"text": t, "pair": p, "label": y} for t, p, y in zip(part.texts, pairs, part.labels, strict=True)]

    def memory_part(self, rows: list[dict[str, Any]]) -> TextSet:
        paired = bool(rows) and rows[0]["pair"] is not None
        return TextSet(
            [r["text"] for r in rows], [r["pair"] for r in rows] if paired else None, [r["label"] for r in rows]
        )

    def memory_keys(self, part: TextSet) -> list[str]:
        return list(part.labels)

    def continual_stages(self, recipe: TextRecipe) -> Stages | None:
        return class_stages(recipe)

    def continual_holdout(self, recipe: TextRecipe) -> Any:
        """The test (else val) texts of `recipe`'s labels."""
        splits = self.splits(recipe)
        part = splits.test if splits.test is not None else splits.val
        if part is None:
            raise UserError("continual.stages: each stage needs validation or test texts to be scored on")
        return part

    def continual_score(self, run: Run, recipe: TextRecipe, holdout: Any) -> float:
        """Accuracy of the run's model on a stage's held-out texts, over its whole head."""
        part = holdout
        inf = self.inference(run)
        labels = inf.labels + sorted(set(part.labels) - set(inf.labels))  # not learnt yet: never predicted
        batch, length = recipe.train.eval_batch_size, inf.spec["max_length"]
        loader = text_loader(inf.tokenizer, part, labels, batch, length, "cpu")
        probs, labels = predict_probs(inf.model, loader)
        return (probs.argmax(1) == labels).float().mean().item()

    def describe(self, splits: Splits, labels: list[str]) -> str:
        n_val = len(splits.val) if splits.val else 0
        grouped = splits.meta.get("split_groups")
        how = (
            f" (val held out by {grouped['mode']} groups: {grouped['linked_texts']:,} texts share one)"
            if grouped
            else ""
        )
        return f"{len(splits.train):,} train / {n_val:,} val examples{how}, {len(labels)} labels"

    def report(
        self, run: Run, recipe: TextRecipe, part: TextSet, split: str, device, source: str | None = None
    ) -> dict[str, Any]:
        inf = self.inference(run, device)
        labels = inf.labels
        loader = text_loader(inf.tokenizer, part, labels, recipe.train.eval_batch_size, inf.spec["max_length"], device)
        with scoring_bar(split, len(part)) as advance:
            probs, y = predict_probs(inf.model, loader, advance)
        pred, y = probs.argmax(1).numpy(), y.numpy()
        summary = classification_summary(y, pred, labels, probs)
        wrong = np.flatnonzero(pred != y)
        worst = wrong[np.argsort(-probs.numpy()[wrong, pred[wrong]])][:10]
        confidently_wrong = [
            {
                "text": part.texts[i],
                "label": labels[y[i]],
                "predicted": labels[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
            for i in worst
        ]
        extra: dict[str, Any] = {
            "source": source or f"{split} split",
            "plots": [],
            "confidently_wrong": confidently_wrong,
        }
        if recipe.track.plots:
            tag = split_tag(split)
            plot_confusion(summary["confusion_matrix"], labels, run.plots_dir / f"confusion_{tag}.png")
            extra["plots"] = plot_paths(run, f"plots/confusion_{tag}.png", reliability_plot(run, summary, tag))
        path = write_report(run.dir, split, summary, extra)
        console.print(
            f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} examples\n" + summary_table(summary)
        )
        console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
        return summary

    def probabilities(self, run: Run, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        recipe = run.recipe()
        device = self.eval_device(recipe)
        inf = self.inference(run, device)
        part = self.splits(recipe).named(split)
        loader = text_loader(
            inf.tokenizer, part, inf.labels, recipe.train.eval_batch_size, inf.spec["max_length"], device
        )
        return predict_probs(inf.model, loader)

    def explain_sample(self, run: Run, labels: list[str]):
        """n validation (else test) texts and their label ids, read when asked (a server never asks)."""

        def sample(n: int) -> tuple[list[str], list[int]]:
            splits = self.splits(run.recipe())
            part = splits.val if splits.val is not None else splits.test
            if part is None:
                raise UserError(f"explain --check: {run.dir} has no validation or test split to check on")
            if part.pairs:
                raise UserError("explain: offered for single-text runs; this one classifies text pairs")
            known = [i for i, label in enumerate(part.labels) if label in labels]
            known = [known[i] for i in spread_sample(len(known), n)]
            return [part.texts[i] for i in known], [labels.index(part.labels[i]) for i in known]

        return sample

    def example_keys(self, run: Run, split: str) -> list[str]:
        return list(self.splits(run.recipe()).named(split).texts)

    def example_groups(self, run: Run, split: str) -> list[str] | None:
        column = run.recipe().data.group_column
        return self.splits(run.recipe()).named(split).columns[column] if column else None

    def read(self, run: Run, recipe: TextRecipe, path: Path) -> TextSet:
        return read_texts(recipe.data, path)

    def predict(self, run: Run, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
        inf = self.inference(run)
        with progress("predicting", len(inputs)) as advance:  # a --file of many texts took minutes, unseen
            rows = classify(inf.model, inf.tokenizer, inf.labels, inf.spec["max_length"], inputs, top_k, advance)
        return [{"text": t, **row} for t, row in zip(inputs, rows)]

    def predictor(self, run: Run, onnx_path: Path | None = None, precision: str = "fp32") -> TextPredictor:
        return TextPredictor(self, run, onnx_path, precision)

    def doctor(self, recipe: TextRecipe) -> DoctorPlan:
        return doctor_plan(recipe)


def classify(
    model, tokenizer, labels: list[str], max_length: int, texts: list[str], top_k: int = 3, advance=None
) -> list[dict[str, Any]]:
    """Raw texts -> label, confidence and top-k per text."""
    if not texts:
        return []
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    probs, _ = predict_probs(model, TextLoader(ids, [0] * len(texts), 64, tokenizer.pad_token_id), advance)
    return [outputs.top_k(p, labels, top_k) for p in probs]


class TextPredictor(TransformerPredictor):
    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        with torch.no_grad(), autocast(self.precision):
            return classify(self.model, self.tokenizer, self.labels, self.spec["max_length"], texts)
