"""Why a text model decided: token attributions with Captum on the input embeddings, merged from word pieces
back to words, for text classification (one target label per text) and NER (one target per predicted entity).

Methods: integrated gradients on the embedding layer (`ig`, from an input whose words are all [PAD], the
special tokens kept; signed: positive words push towards the target), word occlusion (`occlusion`: the
target's logit minus its logit with the word's pieces padded out; signed) and saliency (`saliency`: the
norm of the logit's gradient at each piece's embedding; unsigned). A word's score sums its pieces' (the
mean for occlusion, whose pieces share one value). Written as a coloured HTML file and a markdown table.

`--check` runs the same two sanity tests as for images, on validation texts (their true labels) or NER
sentences (their gold entities): model randomisation (word rankings of the trained and a re-initialised
model must differ) and deletion (accuracy as the most-attributed words are padded out, 0-50%, against the
least attributed and random words).
"""

from __future__ import annotations

import bisect
import hashlib
import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrecipe.data.tokens import entities, split_words
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError
from nnrecipe.trust.explain import RANDOMISATION_BOUND, check_request, check_table, randomised, rank_correlation

METHODS = ("ig", "occlusion", "saliency")
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Encoded:
    """One text as the model reads it: its words (with character offsets), its token ids (1 x L) and, per
    token, the index of the word it belongs to (None: a special token)."""

    text: str
    words: list[tuple[str, int, int]]
    input_ids: torch.Tensor
    word_of: list[int | None]

    def baseline(self, pad_id: int) -> torch.Tensor:
        """The same sequence with every word piece padded out (special tokens kept)."""
        keep = torch.tensor([w is None for w in self.word_of])
        return torch.where(keep, self.input_ids[0], pad_id)[None]


def encode(tokenizer, text: str, max_length: int, head: str) -> Encoded:
    """Tokenised as the family's predict does: a sequence head reads the raw text (pieces found by their
    character offsets), a token head the text split into words (pieces found by word ids)."""
    words = split_words(text)
    if head == "token":
        return encode_split(tokenizer, text, words, max_length)
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)  # fmt: skip
    starts = [s for _, s, _ in words]
    word_of: list[int | None] = []
    for (start, end), special in zip(enc["offset_mapping"], enc["special_tokens_mask"]):
        j = bisect.bisect_right(starts, start) - 1
        word_of.append(None if special or end <= start or j < 0 or start >= words[j][2] else j)
    return Encoded(text, words, torch.tensor([enc["input_ids"]]), word_of)


def encode_split(tokenizer, text: str, words: list[tuple[str, int, int]], max_length: int) -> Encoded:
    """Words as NER tokenises them (pre-split, pieces found by word ids)."""
    enc = tokenizer([w for w, _, _ in words] or [""], is_split_into_words=True, truncation=True, max_length=max_length)
    return Encoded(text, words, torch.tensor([enc["input_ids"]]), list(enc.word_ids()))


def joined(words: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """A sentence's words as one text with each word's offsets (an NER file's sentences come split)."""
    spans, at = [], 0
    for w in words:
        spans.append((w, at, at + len(w)))
        at += len(w) + 1
    return " ".join(words), spans


Score = Callable[[torch.Tensor], torch.Tensor]  # token ids (N x L) -> the target's logit (N)


def piece_scores(model: nn.Module, e: Encoded, score: Score, method: str, pad_id: int) -> torch.Tensor:
    """One attribution per token of `e` (L) for the target `score` reads."""
    from captum.attr import FeatureAblation, LayerGradientXActivation, LayerIntegratedGradients

    layer = model.get_input_embeddings()
    ids, base = e.input_ids, e.baseline(pad_id)
    if method == "ig":
        a = LayerIntegratedGradients(score, layer).attribute(ids, baselines=base, n_steps=32, internal_batch_size=32)
        return a[0].sum(-1).detach()
    if method == "saliency":
        a = LayerGradientXActivation(score, layer, multiply_by_inputs=False).attribute(ids)
        return a[0].norm(dim=-1).detach()
    if method == "occlusion":
        n = len(e.words)  # special tokens are features of their own, never read back
        mask = torch.tensor([[w if w is not None else n + i for i, w in enumerate(e.word_of)]])
        batch = int(mask.max()) + 1  # every word's ablation in one forward, not one forward per word
        with torch.no_grad():
            a = FeatureAblation(score).attribute(ids, baselines=base, feature_mask=mask, perturbations_per_eval=batch)
        return a[0].float()
    raise UserError(f"--method: for text, one or more of {', '.join(METHODS)} (got {method!r})")


def word_scores(e: Encoded, pieces: torch.Tensor, method: str) -> list[float]:
    """Pieces merged back to words: summed (occlusion's pieces share their word's value: that value)."""
    total = np.zeros(len(e.words))
    count = np.zeros(len(e.words))
    for w, v in zip(e.word_of, pieces.tolist()):
        if w is not None:
            total[w] += v
            count[w] += 1
    if method == "occlusion":
        total = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return total.tolist()


def logits_of(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    mask = torch.ones_like(ids) if mask is None else mask
    return model(input_ids=ids, attention_mask=mask).logits.float()


def label_score(model: nn.Module, label: int) -> Score:
    return lambda ids: logits_of(model, ids)[:, label]


def entity_score(model: nn.Module, positions: list[int], tags: list[int]) -> Score:
    """The summed logits of an entity's predicted tags at the first piece of each of its words."""
    p, t = torch.tensor(positions), torch.tensor(tags)
    return lambda ids: logits_of(model, ids)[:, p, t].sum(-1)


def explain_texts(run: Any, s: Any, texts: list[str], methods: list[str], target: str | None, out: Path | None,
                  check: bool, check_examples: int) -> dict[str, Any]:  # fmt: skip
    """Word attributions of each text for each method (runs/<run>/explain/ or `out`: one HTML and one markdown
    file per text), and with `check` the randomisation and deletion checks on validation texts."""
    check_text_request(s, methods, target)
    folder = out or run.dir / "explain"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with progress("explaining", len(texts)) as advance:  # a --file of texts, 32 integrated-gradient steps each
        for text in texts:
            found = text_explanations(s, text, methods, target)
            stem = file_stem(text)
            (folder / f"{stem}.html").write_text(html_page(text, found))
            (folder / f"{stem}.md").write_text(markdown_table(text, found))
            rows += [r | {"html": str(folder / f"{stem}.html"), "markdown": str(folder / f"{stem}.md")} for r in found]
            advance()
    result: dict[str, Any] = {"explanations": rows}
    if check:
        result["checks"] = write_checks(run, s, methods, check_examples)
    return result


def check_text_request(s: Any, methods: list[str], target: str | None) -> None:
    if target is not None and s.head != "sequence":
        raise UserError(f"--target: {target!r}: an NER run explains each predicted entity (leave --target out)")
    check_request(s, methods, target, METHODS, "for text, ")


def text_explanations(s: Any, text: str, methods: list[str], target: str | None) -> list[dict[str, Any]]:
    """The explanations of one text: per method, its label's (text classification) or each predicted entity's."""
    e = encode(s.tokenizer, text, s.max_length, s.head)
    return explain_labels(s, e, methods, target) if s.head == "sequence" else explain_entities(s, e, methods)


def explain_labels(s: Any, e: Encoded, methods: list[str], target: str | None) -> list[dict[str, Any]]:
    with torch.no_grad():
        probs = logits_of(s.model, e.input_ids).softmax(-1)[0]
    pred = int(probs.argmax())
    t = s.labels.index(target) if target is not None else pred
    out = []
    for method in methods:
        scores = word_scores(e, piece_scores(s.model, e, label_score(s.model, t), method, s.pad_id), method)
        out.append({"text": e.text, "method": method, "target": s.labels[t], "predicted": s.labels[pred],
                    "probability": float(probs[t]), "words": word_rows(e, scores)})  # fmt: skip
    return out


def explain_entities(s: Any, e: Encoded, methods: list[str]) -> list[dict[str, Any]]:
    """One explanation per predicted entity: what made the model tag these words so."""
    with torch.no_grad():
        tag_ids = logits_of(s.model, e.input_ids).argmax(-1)[0].tolist()
    first: dict[int, int] = {}  # word -> the position of its first piece
    for i, w in enumerate(e.word_of):
        if w is not None:
            first.setdefault(w, i)
    tags = [s.labels[tag_ids[first[w]]] if w in first else "O" for w in range(len(e.words))]
    out = []
    for kind, a, b in entities(tags)[: s.max_entities]:
        positions = [first[w] for w in range(a, b) if w in first]
        score = entity_score(s.model, positions, [tag_ids[p] for p in positions])
        span = {"text": e.text[e.words[a][1] : e.words[b - 1][2]], "type": kind,
                "start": e.words[a][1], "end": e.words[b - 1][2]}  # fmt: skip
        for method in methods:
            scores = word_scores(e, piece_scores(s.model, e, score, method, s.pad_id), method)
            out.append({"text": e.text, "method": method, "target": kind, "entity": span,
                        "words": word_rows(e, scores)})  # fmt: skip
    return out


def word_rows(e: Encoded, scores: list[float]) -> list[dict[str, Any]]:
    return [{"word": w, "start": a, "end": b, "attribution": v} for (w, a, b), v in zip(e.words, scores)]


def file_stem(text: str) -> str:
    """A readable, collision-safe file name for a text: its first words and a hash of all of it."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "text"
    return f"{words}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def colour(v: float, top: float) -> str:
    """Green for words that push towards the target, red for words that push away (captum's convention)."""
    a = 0.0 if top == 0 else min(1.0, abs(v) / top)
    return f"rgba(0, 160, 0, {a:.2f})" if v >= 0 else f"rgba(220, 0, 0, {a:.2f})"


def html_page(text: str, found: list[dict[str, Any]]) -> str:
    body = [f"<p><b>text:</b> {html.escape(text)}</p>"]
    if not found:
        body.append("<p>no entity predicted: nothing to explain</p>")
    for r in found:
        top = max((abs(w["attribution"]) for w in r["words"]), default=0.0)
        words = " ".join(
            f'<span title="{w["attribution"]:.4f}" style="background:{colour(w["attribution"], top)};padding:1px">'
            f"{html.escape(w['word'])}</span>"
            for w in r["words"]
        )
        about = (f"entity <b>{html.escape(r['entity']['text'])}</b> ({html.escape(r['target'])})" if "entity" in r
                 else f"label <b>{html.escape(r['target'])}</b> (p {r['probability']:.3f}; predicted {html.escape(r['predicted'])})")  # fmt: skip
        body.append(f"<p>{r['method']}, {about}:<br>{words}</p>")
    style = "body{font-family:sans-serif;line-height:2}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def markdown_table(text: str, found: list[dict[str, Any]]) -> str:
    """One column per (method, target), one row per word."""
    md = [f"# Word attributions: {text}", ""]
    if not found:
        return "\n".join(md + ["No entity predicted: nothing to explain.", ""])
    heads = [f"{r['method']}: {r['entity']['text'] if 'entity' in r else r['target']}" for r in found]
    md += ["| word | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(found)]
    for i, w in enumerate(found[0]["words"]):
        word = w["word"].replace("|", "\\|")
        md.append(f"| {word} | " + " | ".join(f"{r['words'][i]['attribution']:+.4f}" for r in found) + " |")
    return "\n".join(md + ["", "Positive: the word pushes towards the target; negative: away from it.", ""])


# -- the checks ----------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One thing a check explains: an encoded text and what is explained in it, a label (text classification)
    or a gold entity (NER: its first pieces' positions and gold tag ids), and how to tell it still holds."""

    e: Encoded
    score: Callable[[nn.Module], Score]
    holds: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits N x ..., row index) -> still right (N)


def label_targets(s: Any, n: int) -> list[Target]:
    texts, labels = s.sample(n)
    out = []
    for text, y in zip(texts, labels):
        e = encode(s.tokenizer, text, s.max_length, "sequence")
        out.append(Target(e, lambda model, y=y: label_score(model, y), lambda logits, y=y: logits.argmax(-1) == y))
    return out


def entity_targets(s: Any, n: int) -> list[Target]:
    """Every gold entity of n validation sentences whose words all kept a piece (not cut by max_length)."""
    sentences, tags = s.sample(n)
    tag_ids = {t: i for i, t in enumerate(s.labels)}
    out = []
    for words, gold in zip(sentences, tags):
        e = encode_split(s.tokenizer, *joined(words), s.max_length)
        first: dict[int, int] = {}
        for i, w in enumerate(e.word_of):
            if w is not None:
                first.setdefault(w, i)
        for _, a, b in entities(gold):
            if all(w in first for w in range(a, b)):
                pos, ids = [first[w] for w in range(a, b)], [tag_ids[gold[w]] for w in range(a, b)]
                pt, it = torch.tensor(pos), torch.tensor(ids)
                out.append(Target(e, lambda model, pos=pos, ids=ids: entity_score(model, pos, ids),
                                  lambda logits, pt=pt, it=it: (logits[:, pt].argmax(-1) == it).all(-1)))  # fmt: skip
    return out


def write_checks(run: Any, s: Any, methods: list[str], n: int) -> dict[str, Any]:
    """The randomisation and deletion checks on n validation texts (their true labels as targets) or, for
    NER, on every gold entity of n validation sentences (an entity holds while all its words keep their tags)."""
    if s.sample is None:
        raise UserError(f"explain --check: {run.dir} has no validation or test examples to check on")
    targets = label_targets(s, n) if s.head == "sequence" else entity_targets(s, n)
    if not targets:
        raise UserError(f"explain --check: no example to check on in {run.dir}'s validation data")
    fresh = randomised(s.model)
    checks = {}
    for method in methods:

        def scores(model: nn.Module, t: Target, m: str = method) -> list[float]:
            return word_scores(t.e, piece_scores(model, t.e, t.score(model), m, s.pad_id), m)

        trained = [scores(s.model, t) for t in targets]
        shuffled = [scores(fresh, t) for t in targets]
        rho = float(np.mean([rank_correlation(torch.tensor([a]).abs(), torch.tensor([b]).abs())
                             for a, b in zip(trained, shuffled)]))  # fmt: skip
        checks[method] = {
            "randomisation": {
                "rank_correlation": rho,
                "bound": RANDOMISATION_BOUND,
                "passed": rho < RANDOMISATION_BOUND,
            },
            "deletion": deletion_curve(s.model, targets, trained, s.pad_id),
        }
    folder = run.dir / "explain"
    folder.mkdir(exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"examples": len(targets), "checks": checks}, indent=2))
    what = ("validation texts, their true labels as targets" if s.head == "sequence"
            else "gold entities of validation sentences as targets")  # fmt: skip
    md = [f"# Explanation checks: {run.dir.name} ({len(targets)} {what})", "", *check_table(checks)]
    md += ["", "Deletion: accuracy (NER: the share of entities whose words all keep their tags) as the top 0-50% of "
           "each text's words by attribution towards the target (or the least attributed, or random words) are "
           "padded out; a smaller area means the attributions find what the model uses.", ""]  # fmt: skip
    (folder / "report.md").write_text("\n".join(md))
    return checks


@torch.no_grad()
def deletion_curve(model: nn.Module, targets: list[Target], scores: list[list[float]], pad_id: int,
                   seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The share of targets still right as each text's top-`fraction` words by `scores` (and, to compare, the
    least attributed and random words) are padded out (they stay in the sequence: the text keeps its length)."""
    from torch.nn.utils.rnn import pad_sequence

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"fractions": list(FRACTIONS), "attributed": [], "least": [], "random": []}
    orders = [(np.argsort(-np.asarray(sc), kind="stable"), np.argsort(np.asarray(sc), kind="stable"),
               rng.permutation(len(sc))) for sc in scores]  # fmt: skip
    words = [torch.tensor([-1 if w is None else w for w in t.e.word_of]) for t in targets]
    for f in FRACTIONS:
        for name, which in (("attributed", 0), ("least", 1), ("random", 2)):
            rows = []
            for t, w, order in zip(targets, words, orders):
                gone = torch.from_numpy(order[which][: int(round(f * len(t.e.words)))].copy())
                rows.append(torch.where(torch.isin(w, gone), pad_id, t.e.input_ids[0]))
            ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
            mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
            logits = logits_of(model, ids, mask)
            right = [bool(t.holds(logits[i : i + 1])[0]) for i, t in enumerate(targets)]
            out[name].append(sum(right) / len(targets))
    for name in ("attributed", "least", "random"):
        out[f"area_{name}"] = float(np.trapezoid(out[name], dx=FRACTIONS[1] - FRACTIONS[0]))
    return out
