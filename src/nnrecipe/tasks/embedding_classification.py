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
from safetensors.torch import load_file, save_file

from nnrecipe.data.text import TextSet
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.runs import Run
from nnrecipe.tasks.text_classification import _read, _splits

TEMPERATURE = 0.05  # cosine similarities / T -> softmax: confidences a person can read, argmax unchanged


def encoder(name: str):
    from sentence_transformers import SentenceTransformer

    from nnrecipe.models.hf import resolve

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
    labels = sorted(set(train.labels))
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


def train(recipe, run: Run, **_: Any) -> dict[str, Any]:
    """Build the prototypes (from descriptions, or `shots` examples per label) and report on test, else val."""
    train_set, val_set, test_set = _splits(recipe)
    model = encoder(recipe.model.name)
    labels, protos = prototypes(recipe, model, train_set)
    save_file({"prototypes": protos.contiguous()}, str(run.dir / "prototypes.safetensors"))
    used = (
        0
        if recipe.model.mode == "zeroshot"
        else sum(min(recipe.model.shots, train_set.labels.count(l)) for l in labels)
    )
    run.update_meta(
        status="finished",
        task="embedding_classification",
        labels_used_examples=used,
        embedding={"labels": labels, "model": recipe.model.name, "mode": recipe.model.mode},
    )
    console.print(
        f"{recipe.model.mode}: {len(labels)} prototypes from "
        + ("the label descriptions" if not used else f"{used} labelled examples")
        + f" ({recipe.model.name})"
    )
    split, part = ("test", test_set) if test_set is not None else ("val", val_set)
    summary = _report(run, part, split, model) if part is not None else {}
    return {"status": "finished", "run": str(run.dir), **summary}


def _load(run: Run):
    meta = run.meta().get("embedding")
    path = run.dir / "prototypes.safetensors"
    if meta is None or not path.is_file():
        raise UserError(f"{run.dir} has no prototypes yet (prototypes.safetensors)")
    return meta, load_file(str(path))["prototypes"]


def _report(run: Run, part: TextSet, split: str, model=None, source: str | None = None) -> dict[str, Any]:
    meta, protos = _load(run)
    labels = meta["labels"]
    unknown = sorted(set(part.labels) - set(labels))
    if unknown:
        raise UserError(f"{split}: labels {', '.join(unknown)} have no prototype (known: {', '.join(labels)})")
    probs = probabilities(model or encoder(meta["model"]), protos, part.texts)
    y = np.array([labels.index(l) for l in part.labels])
    summary = classification_summary(y, probs.argmax(1).numpy(), labels)
    path = write_report(run.dir, split, summary, {"source": source or f"{split} split", "mode": meta["mode"]})
    console.print(
        f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} examples\n" + summary_table(summary)
    )
    console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
    return summary


def evaluate(run: Run, split: str = "test", data_path: str | None = None) -> dict[str, Any]:
    recipe = run.recipe()
    if data_path is not None:
        return _report(run, _read(recipe, Path(data_path)), f"data:{data_path}", source=str(data_path))
    part = dict(zip(("train", "val", "test"), _splits(recipe)))[split]
    if part is None:
        raise UserError(f"--split {split}: this run has no {split} split")
    return _report(run, part, split)


def predict(run: Run, texts: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    meta, protos = _load(run)
    labels = meta["labels"]
    out = []
    for text, p in zip(texts, probabilities(encoder(meta["model"]), protos, texts)):
        top = p.topk(min(top_k, len(labels)))
        out.append(
            {
                "text": text,
                "label": labels[int(top.indices[0])],
                "confidence": float(top.values[0]),
                "top": {labels[int(i)]: float(v) for v, i in zip(top.values, top.indices)},
            }
        )
    return out
