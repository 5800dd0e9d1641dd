"""The recipe parts every family shares, defined once: the header (task, description), tracking, and for
families the engine trains, the optimiser, schedule and loop with the family's own defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, model_validator

from nnrecipe.engine.config import Optim, Schedule, Section, Track, Train

SHARED = ("optim", "schedule", "train", "track")


class FamilyRecipe(Section):
    """What every recipe has besides its family's own sections. A family narrows `task` to its name."""

    task: str = Field(description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    track: Track = Field(default_factory=Track)

    def ordered(self) -> dict[str, Any]:
        """The recipe as plain data, in reading order: the header, the family's own sections, the shared ones."""
        raw = self.model_dump(mode="json")
        head = [k for k in ("task", "description") if k in raw]
        own = [k for k in raw if k not in head and k not in SHARED]
        return {k: raw[k] for k in [*head, *own, *(k for k in SHARED if k in raw)]}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.ordered(), sort_keys=False)


class TrainedRecipe(FamilyRecipe):
    """A recipe the engine trains. DEFAULTS holds the family's own defaults for the shared sections, kept
    for every field a recipe does not set (so `train: {epochs: 1}` still clips at 1.0 for a transformer)."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    optim: Optim = Field(default_factory=Optim)
    schedule: Schedule = Field(default_factory=Schedule)
    train: Train = Field(default_factory=Train)

    @classmethod
    def defaults_for(cls, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The shared sections' defaults for this raw recipe (a family may pick them by its model)."""
        return cls.DEFAULTS

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, raw: Any) -> Any:
        defaults = cls.defaults_for(raw) if isinstance(raw, dict) else {}
        if defaults:
            raw = dict(raw)
            for section, values in defaults.items():
                given = raw.get(section)
                if given is None or isinstance(given, dict):
                    raw[section] = {**values, **(given or {})}
        return raw

    @model_validator(mode="after")
    def _ewc_unsharded(self):
        continual = getattr(self, "continual", None)
        if self.train.strategy == "fsdp" and getattr(continual, "strategy", "") == "ewc":
            # its penalty compares each whole weight with the earlier run's; FSDP holds shards of them
            raise ValueError("continual.strategy: ewc does not combine with train.strategy: fsdp; use ddp")
        return self


class ContinualBase(Section):
    """Continual learning, what every classifier family offers: a run that continues another (its weights,
    its classes with their head rows, its replay memory or Fisher information) under one strategy."""

    from_run: Path | None = Field(
        None,
        description="The run this one continues (`train --continue-from`): its weights start this run, its classes "
        "keep their head rows (new classes get new rows), and its replay memory or Fisher information is used.",
    )
    strategy: Literal["finetune", "replay", "ewc", "lwf"] = Field(
        "finetune",
        description="finetune: train on the new data alone (the baseline); replay: add a rehearsal memory of earlier "
        "examples; ewc: penalise moving weights the earlier data's Fisher information marks as important; lwf: "
        "distil the earlier model's outputs on the new data.",
    )
    memory: int = Field(200, ge=0, description="replay: examples kept over all classes seen (equal share per class).")
    ewc_lambda: float = Field(1000.0, ge=0, description="ewc: weight of the penalty sum_i F_i (w_i - w*_i)^2.")
    lwf_alpha: float = Field(1.0, ge=0, description="lwf: weight of the distillation loss.")
    lwf_temperature: float = Field(2.0, gt=0, description="lwf: softmax temperature of the distillation.")

    @model_validator(mode="after")
    def _stages_and_memory(self):
        """Class-incremental stages each bring classes of their own (an empty stage ended in pydantic's
        traceback; a class in two stages trained as if it were new twice), and replay needs a memory."""
        seen: dict[str, int] = {}
        for i, stage in enumerate(getattr(self, "stages", None) or [], 1):
            if not stage:
                raise ValueError(f"continual.stages: stage {i} has no classes")
            for c in stage:
                if c in seen:
                    raise ValueError(
                        f"continual.stages: {c!r} is in stage {seen[c]} and stage {i}; each stage brings new classes"
                    )
                seen[c] = i
        if self.strategy == "replay" and self.memory == 0:
            raise ValueError("continual.memory: 0 keeps nothing to replay (continual.strategy: finetune is that run)")
        return self
