"""Zero- and few-shot text classification from sentence embeddings: nearest class prototype by cosine.

No training loop: a frozen sentence encoder (sentence-transformers; the packaged all-MiniLM-L6-v2 by
default) embeds either a description of each label (zero-shot) or `shots` labelled examples per class
(few-shot, their mean), and a text takes the label whose prototype is most similar. The prototypes are
the run's weights (prototypes.safetensors); scores and reports are the text classifier's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from nnrecipe.data.text import TextSet, label_names
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.models.hf import resolve
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.runs import Run
from nnrecipe.tasks import outputs
from nnrecipe.tasks.family import Inference, Metric, Splits, register_family
from nnrecipe.tasks.supervised import EvaluatedFamily
from nnrecipe.tasks.text_inputs import read_texts, text_splits
from nnrecipe.tasks.text_recipes import EmbeddingRecipe

PROTOTYPES = "prototypes.safetensors"  # the run's weights
TEMPERATURE = 0.05  # cosine similarities / T -> softmax: confidences a person can read, argmax unchanged


def encoder(name: str):
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(str(resolve(name)), device=device)


def embed(model, texts: list[str]) -> torch.Tensor:
    """Unit-length float32 embeddings on the CPU."""
    return (
        model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=len(texts) > 2000
        )
        .float()
        .cpu()
    )


def prototypes(recipe, model, train: TextSet) -> tuple[list[str], torch.Tensor]:
    labels = label_names(train.labels)
    m = recipe.model
    if m.mode == "zeroshot":
        unknown = sorted(set(m.label_texts) - set(labels))
        if unknown:
            raise UserError(
                f"model.label_texts: {', '.join(unknown)} not among the data's labels ({', '.join(labels)})"
            )
        return labels, embed(model, [m.template.format(m.label_texts.get(l, l)) for l in labels])
    rng = np.random.default_rng(m.seed)
    rows = []
    for label in labels:
        idx = [i for i, l in enumerate(train.labels) if l == label]
        pick = rng.choice(idx, size=min(m.shots, len(idx)), replace=False)
        rows.append(torch.nn.functional.normalize(embed(model, [train.texts[i] for i in pick]).mean(0), dim=0))
    return labels, torch.stack(rows)


def probabilities(model, protos: torch.Tensor, texts: list[str]) -> torch.Tensor:
    return (embed(model, texts) @ protos.T / TEMPERATURE).softmax(1)


class Prototypes(torch.nn.Module):
    """The encoder and the class prototypes as one model: texts in, probabilities out."""

    def __init__(self, encoder, prototypes: torch.Tensor):
        super().__init__()
        self.encoder, self.prototypes = encoder, prototypes

    def forward(self, texts: list[str]) -> torch.Tensor:
        return probabilities(self.encoder, self.prototypes, texts)


@register_family
class EmbeddingClassification(EvaluatedFamily):
    """Scored and used like a classifier, trained by no loop: `train` builds the prototypes."""

    name = "embedding_classification"
    recipe = EmbeddingRecipe
    metric = Metric("accuracy", "max")
    output = outputs.CLASSIFICATION
    card_metrics = ("accuracy", "examples")
    predict_inputs = "texts"
    multi_process = False  # no training loop to share

    def splits(self, recipe: EmbeddingRecipe) -> Splits:
        return text_splits(recipe.data)

    def read(self, run: Run, recipe: EmbeddingRecipe, path: Path) -> TextSet:
        return read_texts(recipe.data, path)

    def eval_device(self, recipe: EmbeddingRecipe) -> torch.device:
        return torch.device("cpu")  # the encoder picks its own device

    def train(self, recipe: EmbeddingRecipe, run: Run, *, resume: bool = False, callbacks=()) -> dict[str, Any]:
        """Build the prototypes (from descriptions, or `shots` examples per label) and report on test, else val."""
        splits = self.splits(recipe)
        model = encoder(recipe.model.name)
        labels, protos = prototypes(recipe, model, splits.train)
        save_file({"prototypes": protos.contiguous()}, str(run.dir / PROTOTYPES))
        m = recipe.model
        used = 0 if m.mode == "zeroshot" else sum(min(m.shots, splits.train.labels.count(label)) for label in labels)
        spec = {"labels": labels, "model": m.name, "mode": m.mode}
        run.update_meta(status="finished", task=self.name, labels_used_examples=used, spec=spec)
        source = "the label descriptions" if not used else f"{used} labelled examples"
        console.print(f"{m.mode}: {len(labels)} prototypes from {source} ({m.name})")
        split, part = splits.reported()
        summary = self.report(run, recipe, part, split, None, model=model) if part is not None else {}
        return {"status": "finished", "run": str(run.dir), **summary}

    def inference(self, run: Run, device="cpu", model=None) -> Inference:
        from safetensors.torch import load_file

        spec = run.spec(run.dir / PROTOTYPES)
        protos = load_file(str(run.dir / PROTOTYPES))["prototypes"]
        return Inference(Prototypes(model or encoder(spec["model"]), protos), spec["labels"], spec)

    def report(
        self, run: Run, recipe, part: TextSet, split: str, device, source: str | None = None, model=None
    ) -> dict[str, Any]:
        inf = self.inference(run, model=model)
        labels = inf.labels
        unknown = sorted(set(part.labels) - set(labels))
        if unknown:
            raise UserError(f"{split}: labels {', '.join(unknown)} have no prototype (known: {', '.join(labels)})")
        probs = inf.model(list(part.texts))  # a streamed split's texts read here (no tokens kept)
        y = np.array([labels.index(label) for label in part.labels])
        summary = classification_summary(y, probs.argmax(1).numpy(), labels, probs)
        path = write_report(run.dir, split, summary, {"source": source or f"{split} split", "mode": inf.spec["mode"]})
        console.print(
            f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} examples\n" + summary_table(summary)
        )
        console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
        return summary

    def predict(self, run: Run, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
        inf = self.inference(run)
        probs = inf.model(inputs) if inputs else []
        return [{"text": t, **outputs.top_k(p, inf.labels, top_k)} for t, p in zip(inputs, probs)]
