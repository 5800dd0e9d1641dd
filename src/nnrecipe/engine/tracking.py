"""Where a run's numbers go: metrics.jsonl (the source of truth), TensorBoard, optionally W&B offline and
MLflow (engine/mlflow_tracking.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnrecipe.engine.distributed import is_main_process
from nnrecipe.errors import UserError


class Tracker:
    """Writes from the main process only; other processes of a multi-process run keep their rows in memory."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb: bool = False,
        config: dict | None = None,
        mlflow: tuple[str, str] | None = None,  # (tracking URI, experiment)
    ):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        self._mlflow = None
        self._main = is_main_process()
        self._rows: list[dict[str, Any]] = []
        if not self._main:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as _wandb
            except ImportError:
                raise UserError("track.wandb: true needs the wandb package: pip install wandb") from None
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = _wandb.init(
                project="nnrecipe", name=Path(run_dir).name, dir=str(run_dir), config=config or {}
            )
        if mlflow is not None:
            from nnrecipe.engine.mlflow_tracking import MlflowLogger

            self._mlflow = MlflowLogger(Path(run_dir), *mlflow, config or {})

    @classmethod
    def for_recipe(cls, run_dir: Path, recipe) -> Tracker:
        """The sinks a recipe's `track` section asks for."""
        t = recipe.track
        mlflow = (t.mlflow_uri, t.mlflow_experiment) if t.mlflow else None
        return cls(run_dir, t.tensorboard, t.wandb, recipe.model_dump(mode="json"), mlflow)

    def history(self) -> list[dict[str, Any]]:
        return read_metrics(self.path) if self._main else list(self._rows)

    def keep_epochs_before(self, epoch: int) -> None:
        """On resume: drop rows the last checkpoint does not cover (written after it, before a crash)."""
        rows = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        self._rows = rows
        if self._main:  # atomically: other processes of a multi-process run read it at the same moment
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.path)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self._tb:
            for k, v in values.items():
                self._tb.add_scalar(f"step/{k}", v, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Text at a step (a language model's sample): TensorBoard's text tab, and W&B when on."""
        if self._tb:
            self._tb.add_text(tag, f"```\n{text}\n```", step)  # a code block keeps line breaks
        if self._wandb:
            self._wandb.log({tag: text}, step=step)

    def log_epoch(self, row: dict[str, Any], step_key: str = "epoch") -> None:
        """Append a row to metrics.jsonl and log its numbers at x = row[step_key] (epoch, episode, step)."""
        if not self._main:
            self._rows.append(row)
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != step_key}
        if self._tb:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, row[step_key])
            self._tb.flush()
        if self._wandb:
            self._wandb.log(scalars, step=row[step_key])
        if self._mlflow:
            self._mlflow.log(scalars, row[step_key])

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted field names ({"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}), as --set names them."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out
