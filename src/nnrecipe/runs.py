"""Run directories: one folder per run holding the resolved recipe, metadata, metrics, checkpoints,
reports and plots, so that `resume`, `evaluate` and `predict` need nothing but the folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.engine.config import with_absolute_paths
from nnrecipe.engine.distributed import is_main_process, world_size
from nnrecipe.errors import UserError, first_line
from nnrecipe.reporting import read_report, run_meta
from nnrecipe.tasks.family import family_of, get_family

# Every status a run.json can hold: created (folder made), running, and how it ended. `nnrecipe runs
# --status` accepts these, and `damaged` for a run whose run.json cannot be read.
RUN_STATUSES = ("created", "running", "interrupted", "finished", "early_stopped", "diverged", "pruned", "failed")


@dataclass
class Run:
    dir: Path

    @property
    def recipe_path(self) -> Path:
        return self.dir / "recipe.yaml"

    @property
    def meta_path(self) -> Path:
        return self.dir / "run.json"

    @property
    def plots_dir(self) -> Path:
        (self.dir / "plots").mkdir(exist_ok=True)
        return self.dir / "plots"

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "best.safetensors"

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.safetensors"

    def recipe(self) -> Any:
        """The run's resolved recipe, as its own family's recipe model."""
        return family_of(self).parse_recipe(self.raw_recipe())

    def raw_recipe(self) -> dict[str, Any]:
        """recipe.yaml as written, a dict; a missing or damaged one is a one-line error naming it."""
        try:
            raw = yaml.safe_load(self.recipe_path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{self.dir} is not a run directory (no recipe.yaml)") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(
                f"{self.recipe_path} is damaged (not YAML: {first}); restore it, or remove the run"
            ) from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.recipe_path} is damaged (not a mapping); restore it, or remove the run")
        return raw

    def meta(self) -> dict[str, Any]:
        return run_meta(self.dir)

    def spec(self, weights: Path | None = None) -> dict[str, Any]:
        """What inference needs besides the weights (run.json's "spec"); a clear error before training ends."""
        weights = weights or self.best_checkpoint
        meta = self.meta()
        spec = meta.get("spec")
        if spec is None or not (weights.is_file() or "ensemble" in meta):  # an ensemble's weights are its members'
            if meta.get("cleaned"):
                raise UserError(f"{self.dir}: its checkpoints were removed by `nnrecipe clean` on {meta['cleaned']}")
            raise UserError(f"{self.dir} has no trained model yet (no {weights.relative_to(self.dir)})")
        return spec

    def report(self) -> dict[str, Any]:
        """report.json: one entry per evaluated split ({} before the first report)."""
        return read_report(self.dir)

    @contextmanager
    def failure_recorded(self, stage: str, expected: tuple[type[Exception], ...] = ()) -> Iterator[None]:
        """The run marked failed, with `stage` and the error's first line, when the block raises anything but
        `expected` (a stop the caller records itself): a run that stopped on bad data or a crash is not left
        saying running, finished, or diverged (the loss's word)."""
        try:
            yield
        except expected:
            raise
        except Exception as e:
            self.update_meta(status="failed", error=f"{stage}: {first_line(e)}")
            raise

    def update_meta(self, **values: Any) -> None:
        """Merge `values` into run.json (atomically); a status that ends the run stamps when (`ended`)."""
        if not is_main_process():
            return
        if values.get("status") not in (None, "created", "running"):
            values["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta = self.meta() | values
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self.meta_path)


def create_run(recipe: Any, recipe_name: str) -> Run:
    """A new run directory. Under torchrun / accelerate launch, rank 0 creates it and every process gets
    the same path (a timestamped name could differ by a second between processes)."""
    if world_size() > 1:
        import torch
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        # Joins the process group torchrun describes in the environment (gloo when there is no GPU).
        state = PartialState(cpu=not torch.cuda.is_available())
        shared = [str(_create_run_dir(recipe, recipe_name).dir) if state.is_main_process else None]
        broadcast_object_list(shared)
        return Run(Path(shared[0]))
    return _create_run_dir(recipe, recipe_name)


def given_twice(paths: list[str | Path]) -> Path | None:
    """The first of `paths` that names a folder listed before it, however spelled (a/ and ./a/../a), or None."""
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.resolve() in seen:
            return p
        seen.add(p.resolve())
    return None


def untaken(path: Path) -> Path:
    """`path`, or a fresh timestamped name beside it when a folder with files holds it already: a run, a
    seeds summary or an ensemble is never overwritten by a later one of the same name."""
    if path.exists() and any(path.iterdir()):
        return path.with_name(f"{path.name}-{time.strftime('%H%M%S')}-{os.getpid()}")
    return path


def _create_run_dir(recipe: Any, recipe_name: str) -> Run:
    name = recipe.track.name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = untaken(Path(recipe.track.runs_dir) / name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, a read-only place: it was a traceback
        raise UserError(
            f"track.runs_dir {recipe.track.runs_dir}: cannot make the run folder {path} ({e.strerror})"
        ) from None
    (path / "recipe.yaml").write_text(with_absolute_paths(recipe).to_yaml())
    run = Run(path)
    metric = get_family(recipe.task).metric
    run.update_meta(
        status="created",
        task=recipe.task,
        recipe_name=recipe_name,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        metric={"name": metric.name, "mode": metric.mode},  # read by `nnrecipe runs` without the family
    )
    return run


def train_new_run(family: Any, recipe: Any, recipe_name: str, label: str = "") -> tuple[Run, dict[str, Any]]:
    """A new run (or one more of a series: a seed, a stage): create it, say where, train it. A run that fails
    before its training starts (a missing data file, a bad field found late) leaves no directory behind, so
    that `runs`, `predict` and newest-run look-ups never trip over an empty one."""
    from nnrecipe.engine.loop import console

    run = create_run(recipe, recipe_name)
    console.print(f"{label + ': ' if label else ''}run directory {run.dir}")
    try:
        return run, family.train(recipe, run)
    except BaseException:
        if discard_untrained(run):  # the line above named a folder that is now gone; say so, or it is looked for
            console.print(f"{label + ': ' if label else ''}run directory {run.dir} removed: nothing was trained")
        raise


def discard_untrained(run: Run) -> bool:
    """Remove the run's directory if nothing was trained in it (its status still "created"), and say whether
    it went: a failed or stopped start left an empty one behind for `runs`, `predict` and newest-run look-ups
    to trip over."""
    if is_main_process() and run.meta().get("status") == "created":
        shutil.rmtree(run.dir, ignore_errors=True)
        return True
    return False


def open_run(path: str | Path) -> Run:
    run = Run(Path(path))
    if not run.recipe_path.is_file():
        raise UserError(f"{path} is not a run directory (no recipe.yaml); runs live under runs/<name>")
    return run
