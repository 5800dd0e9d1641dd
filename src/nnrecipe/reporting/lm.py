"""Language-model reports: loss in nats per token, perplexity, bits per character, and generated samples,
written into report.json and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnrecipe.reporting import merge_report, plot_lines, source_line


def write_lm_report(run_dir: Path, split: str, summary: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Merge this split into report.json and rewrite report.md."""
    run_dir = Path(run_dir)
    path, report = merge_report(run_dir, split, summary | (extra or {}))
    md = [f"# Report: {run_dir.name}", "", "Loss is the mean cross-entropy in nats per token.", ""]
    for name, s in report.items():
        md += [
            f"## {name}: loss {s['loss']:.4f}, perplexity {s['perplexity']:.2f}, {s['bits_per_char']:.3f} bits per character",
            "",
        ]
        md += source_line(s)
        md += [f"{s['tokens']:,} tokens scored in blocks of {s['block_size']}.", ""]
        md += plot_lines(s)
        for sample in s.get("samples", []):
            md += [f"Prompt {sample['prompt']!r}:", "", "```", sample["prompt"] + sample["text"], "```", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    return path


def write_mlm_report(run_dir: Path, split: str, summary: dict[str, Any], model_folder: Path) -> Path:
    """A masked-LM (domain-adaptive pretraining) run's report: loss and accuracy at the masked tokens."""
    run_dir = Path(run_dir)
    path, report = merge_report(run_dir, split, summary)
    md = [f"# Report: {run_dir.name}", "", "Masked-LM loss: cross-entropy in nats at the masked tokens.", ""]
    for name, s in report.items():
        md += [
            f"## {name}: loss {s['loss']:.4f}, perplexity {s['perplexity']:.2f}, masked-token accuracy "
            f"{s['masked_accuracy']:.3f}",
            "",
        ]
        md += source_line(s)
        md += [f"{s['tokens']:,} tokens in blocks of {s['block_size']}.", ""]
    md += [f"Model folder: `{model_folder}` (set `model.name` of a text or NER recipe to it).", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    return path
