"""Token classification (NER): a pretrained encoder with a per-token head, fine-tuned on the shared engine.
Labels sit on each word's first sub-token; predictions are read back per word and scored per entity
(seqeval); predict and serve return entities with character offsets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnrecipe.data.splits import spread_sample
from nnrecipe.data.tokens import TokenSet, encode_words, entities, split_words, tag_names
from nnrecipe.engine.loop import console
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError
from nnrecipe.reporting.ner import ner_summary, ner_table, write_ner_report
from nnrecipe.runs import Run
from nnrecipe.tasks import outputs
from nnrecipe.tasks.family import DoctorPlan, Metric, Splits, register_family
from nnrecipe.tasks.ner_doctor import plan as doctor_plan
from nnrecipe.tasks.serving import autocast
from nnrecipe.tasks.supervised import plot_paths, scoring_bar
from nnrecipe.tasks.text_inputs import StreamedWordLoader, WordLoader, read_tokens, sentences, token_splits, word_loader
from nnrecipe.tasks.text_recipes import TokenRecipe
from nnrecipe.tasks.transformer import TransformerFamily, TransformerPredictor


class NerTask:
    """The engine's TrainTask: token cross-entropy (the model skips -100), validation scored per entity."""

    def __init__(self, tags: list[str], gold: list[list[str]] | None = None):
        self.tags, self.gold = tags, gold

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        return model(**batch).loss, len(batch["labels"])

    def evaluate(self, model: nn.Module, loader: WordLoader) -> dict[str, float]:
        tagged = predict_tags(model, loader, self.tags)
        s = ner_summary(self.gold, tagged.tags)
        return {
            "loss": tagged.loss,
            "f1": s["f1"],
            "precision": s["precision"],
            "recall": s["recall"],
            "token_accuracy": s["token_accuracy"],
        }


@dataclass
class Tagged:
    """What predict_tags found: per sentence, per word, the tag predicted; the mean token loss where labels
    exist; how many words max_length cut off (predicted O)."""

    tags: list[list[str]]
    loss: float
    truncated_words: int


@torch.no_grad()
def predict_tags(model: nn.Module, loader: WordLoader | StreamedWordLoader, tags: list[str], advance=None) -> Tagged:
    """Per word: the tag predicted at its first sub-token ("O" for words the tokenizer cut off). The loader
    must not shuffle. `advance(n)` is told of each batch's sentences."""
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    loss_sum, count, truncated = 0.0, 0, 0
    for batch, word_index, n_words in loader.tagged_batches():
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        keep = labels != -100
        if keep.any():
            loss_sum += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
        best = logits.argmax(-1).cpu()
        for row, k, index, n in zip(best, keep.cpu(), word_index, n_words):
            words = ["O"] * n
            for w, t in zip(index, row[k].tolist()):
                words[w] = tags[t]
            out.append(words)
            truncated += n - (max(index) + 1 if index else 0)
        if advance is not None:
            advance(len(n_words))
    model.train(was_training)
    return Tagged(out, loss_sum / max(1, count), truncated)


@register_family
class TokenClassification(TransformerFamily):
    name = "token_classification"
    recipe = TokenRecipe
    metric = Metric("f1", "max")
    output = outputs.ENTITIES
    card_metrics = ("f1", "precision", "recall", "token_accuracy", "sentences")
    predict_inputs = "texts"
    head = "token"

    def splits(self, recipe: TokenRecipe) -> Splits:
        return token_splits(recipe.data)

    def labels_of(self, splits: Splits) -> list[str]:
        return tag_names(splits.train.tags + (splits.val.tags if splits.val else []))

    def loader(self, tokenizer, part: TokenSet, labels: list[str], batch_size: int, max_length: int, device, **kw):
        return word_loader(tokenizer, part, labels, batch_size, max_length, device, **kw)

    def train_task(self, labels: list[str], splits: Splits) -> NerTask:
        return NerTask(labels, splits.val.tags if splits.val else None)

    def memory_rows(self, part: TokenSet) -> list[dict[str, Any]]:
        return [{"words": w, "tags": t} for w, t in zip(part.words, part.tags, strict=True)]

    def memory_part(self, rows: list[dict[str, Any]]) -> TokenSet:
        return TokenSet([r["words"] for r in rows], [r["tags"] for r in rows])

    def memory_keys(self, part: TokenSet) -> list[str]:
        """A sentence's share is its first entity type's (sentences without one share the key O)."""
        return [next((t[2:] for t in tags if t != "O"), "O") for tags in part.tags]

    def texts_of(self, part: TokenSet) -> Iterable[str]:
        return sentences(part)

    def describe(self, splits: Splits, labels: list[str]) -> str:
        n_val = len(splits.val) if splits.val else 0
        return f"{len(splits.train):,} train / {n_val:,} val sentences, {(len(labels) - 1) // 2} entity types"

    def report(
        self, run: Run, recipe: TokenRecipe, part: TokenSet, split: str, device, source: str | None = None
    ) -> dict[str, Any]:
        inf = self.inference(run, device)
        tags = inf.labels
        loader = word_loader(inf.tokenizer, part, tags, recipe.train.eval_batch_size, inf.spec["max_length"], device)
        with scoring_bar(split, len(part)) as advance:
            tagged = predict_tags(inf.model, loader, tags, advance)
        pred = tagged.tags
        summary = ner_summary(part.tags, pred)

        def shown(words, seq):
            return ", ".join(f"{' '.join(words[a:b])}/{k}" for k, a, b in entities(seq)) or "-"

        errors = [
            {"text": " ".join(w), "gold": shown(w, g), "predicted": shown(w, p)}
            for w, g, p in zip(part.words, part.tags, pred)
            if entities(g) != entities(p)
        ][:10]
        extra = {
            "source": source or f"{split} split",
            "truncated_words": tagged.truncated_words,
            "errors": errors,
            "plots": plot_paths(run),
        }
        path = write_ner_report(run.dir, split, summary, extra)
        console.print(
            f"\n{split} entity F1 {summary['f1']:.4f} (precision {summary['precision']:.4f}, recall {summary['recall']:.4f}), "
            f"token accuracy {summary['token_accuracy']:.4f} on {summary['sentences']} sentences\n" + ner_table(summary)
        )
        console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
        return summary

    def read(self, run: Run, recipe: TokenRecipe, path: Path) -> TokenSet:
        return read_tokens(recipe.data, path)

    def predict(self, run: Run, inputs: list[str]) -> list[dict[str, Any]]:
        inf = self.inference(run)
        if not inputs:
            return []
        with progress("predicting", len(inputs)) as advance:  # a --file of many texts took minutes, unseen
            return tag_texts(inf.model, inf.tokenizer, inf.labels, inf.spec["max_length"], inputs, advance)

    def predictor(self, run: Run, onnx_path: Path | None = None, precision: str = "fp32") -> NerPredictor:
        return NerPredictor(self, run, onnx_path, precision)

    export_output = ("batch", "sequence")  # a row of logits per sub-token
    export_notes = {"words": "split the CoNLL way; each word's tag is read at its first sub-token"}

    def explain_sample(self, run: Run, labels: list[str]):
        """n validation (else test) sentences and their gold tags, read when asked (a server never asks)."""

        def sample(n: int) -> tuple[list[list[str]], list[list[str]]]:
            splits = self.splits(run.recipe())
            part = splits.val if splits.val is not None else splits.test
            if part is None:
                raise UserError(f"explain --check: {run.dir} has no validation or test split to check on")
            known = set(labels)
            fits = [i for i, tags in enumerate(part.tags) if set(tags) <= known]
            fits = [fits[i] for i in spread_sample(len(fits), n)]
            return [part.words[i] for i in fits], [part.tags[i] for i in fits]

        return sample

    def doctor(self, recipe: TokenRecipe) -> DoctorPlan:
        return doctor_plan(recipe)


def tag_texts(
    model, tokenizer, tags: list[str], max_length: int, texts: list[str], advance=None
) -> list[dict[str, Any]]:
    """Raw texts -> entities with character offsets: split into words, tag them, group B-/I- runs."""
    spans = [split_words(t) for t in texts]
    words = [[w for w, _, _ in s] or [""] for s in spans]
    loader = WordLoader(encode_words(tokenizer, words, None, {}, max_length), 64, tokenizer.pad_token_id)
    pred = predict_tags(model, loader, tags, advance).tags
    out = []
    for text, span, seq in zip(texts, spans, pred):
        found = [
            {"text": text[span[a][1] : span[b - 1][2]], "type": kind, "start": span[a][1], "end": span[b - 1][2]}
            for kind, a, b in entities(seq[: len(span)])
        ]
        out.append({"text": text, "entities": found})
    return out


class NerPredictor(TransformerPredictor):
    """NER: each text comes back with its entities and their character offsets."""

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        with torch.no_grad(), autocast(self.precision):
            return tag_texts(self.model, self.tokenizer, self.labels, self.spec["max_length"], texts)
