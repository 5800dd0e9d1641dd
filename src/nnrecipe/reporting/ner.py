"""Entity-level NER reports from seqeval (strict IOB2: an entity counts only with its exact span and
type), the classic CoNLL table, plus word-level tag accuracy; written into report.json and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnrecipe.reporting import merge_report, plot_lines, source_line


def ner_summary(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    keys = ("precision", "recall", "f1-score", "support")
    averages = {"micro avg", "macro avg", "weighted avg"}
    words = sum(len(s) for s in gold)
    correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    micro = rep["micro avg"]
    return {
        "f1": float(micro["f1-score"]),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "token_accuracy": correct / max(1, words),
        "sentences": len(gold),
        "words": words,
        "per_type": {t: {k: float(v[k]) for k in keys} for t, v in rep.items() if t not in averages},
        "micro_avg": {k: float(micro[k]) for k in keys},
        "macro_avg": {k: float(rep["macro avg"][k]) for k in keys},
    }


def ner_table(summary: dict[str, Any]) -> str:
    lines = ["| entity type | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    rows = [*summary["per_type"].items(), ("micro avg", summary["micro_avg"]), ("macro avg", summary["macro_avg"])]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1-score']:.4f} | {int(m['support'])} |"
        )
    return "\n".join(lines)


def write_ner_report(run_dir: Path, split: str, summary: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Merge this split into report.json and rewrite report.md."""
    run_dir = Path(run_dir)
    path, report = merge_report(run_dir, split, summary | (extra or {}))
    md = [
        f"# Report: {run_dir.name}",
        "",
        "Entity-level scores (seqeval, strict IOB2); token accuracy is per word.",
        "",
    ]
    for name, s in report.items():
        md += [
            f"## {name}: entity F1 {s['f1']:.4f}, token accuracy {s['token_accuracy']:.4f} "
            f"({s['sentences']} sentences, {s['words']} words)",
            "",
        ]
        md += source_line(s)
        if s.get("truncated_words"):
            md += [f"{s['truncated_words']} words fell beyond data.max_length and were scored as predicted O.", ""]
        md += [ner_table(s), ""]
        md += plot_lines(s)
        if s.get("errors"):
            md += ["Sentences with wrong entities (first 10):", "", "| sentence | gold | predicted |", "|---|---|---|"]
            md += [f"| {e['text'][:120].replace('|', '/')} | {e['gold']} | {e['predicted']} |" for e in s["errors"]] + [
                ""
            ]
    (run_dir / "report.md").write_text("\n".join(md))
    return path
