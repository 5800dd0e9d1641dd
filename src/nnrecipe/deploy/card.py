"""Model cards, built one way for every family and every artefact: what is served or exported, how its
inputs are read, the run's scores, and hashes that tie it to the run's weights."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from nnrecipe.runs import Run
from nnrecipe.tasks.family import TaskFamily


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_card(
    run: Run, family: TaskFamily, labels: list[str], model: str, facts: dict[str, Any], **extra
) -> dict[str, Any]:
    """task, labels, model, the family's `facts` (input, preprocessing, output), `extra` (backend, format,
    checks...), the report's metrics the family shows on cards, the source run and its weights' hash."""
    metrics = {split: {k: r[k] for k in family.card_metrics if k in r} for split, r in run.report().items()}
    weights = run.best_checkpoint if run.best_checkpoint.is_file() else None
    return {
        "task": family.name,
        "labels": labels,
        "model": model,
        **facts,
        **extra,
        "metrics": metrics,
        "source_run": str(run.dir),
        "temperature": run.meta().get("temperature"),  # `nnrecipe calibrate`'s, folded into the graph; or None
        "sha256": {"weights": sha256(weights) if weights else None},
    }


def write_card(artefact: Path, card: dict[str, Any]) -> dict[str, Any]:
    """<artefact>.card.json and <artefact>.card.md beside the artefact, with its hash and creation time."""
    card = card | {
        "sha256": card["sha256"] | {"artefact": sha256(artefact)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    artefact.with_name(artefact.name + ".card.json").write_text(json.dumps(card, indent=2))
    lines = [f"# Model card: {artefact.name}", ""]
    lines += [f"- {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in card.items() if k != "labels"]
    lines.insert(3, f"- labels: {', '.join(card['labels'])}")
    artefact.with_name(artefact.name + ".card.md").write_text("\n".join(lines) + "\n")
    return card
