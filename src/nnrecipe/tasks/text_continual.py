"""Continual learning for the text families (classification, NER): a run that continues another
(`continual.from_run`) starts from its weights with the head grown for new labels or tags (old rows copied),
keeps its tokenizer (a from-scratch model's vocabulary), and learns under one strategy: finetune, replay
(earlier examples kept in `memory.safetensors`, an equal share per label, at random), ewc or lwf (as for
images: tasks/continual_parts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.runs import Run
from nnrecipe.tasks.continual_parts import Forward, balanced_memory, continual_loss, earlier

MEMORY = "memory.safetensors"

TEXTS = Forward(
    logits=lambda model, batch: model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
    targets=lambda batch: batch["labels"],
)


@dataclass
class Continued:
    """What a continued text run takes from the earlier one."""

    prior: Run
    labels: list[str]  # the earlier run's labels first, then the new ones
    memory: Any | None  # the earlier examples replayed (the family's own split type)


def continued(family, recipe, labels: list[str]) -> Continued | None:
    """The earlier run (None for a first run), checked to be this family's with the same model and mode."""
    prior = earlier(recipe, family.name)
    if prior is None:
        return None
    spec, m = prior.spec(), recipe.model
    if (spec["model"], spec["finetune"]) != (m.name, m.finetune):
        raise UserError(
            f"continual.from_run: {prior.dir} trained {spec['model']} ({spec['finetune']}); this recipe has "
            f"{m.name} ({m.finetune}): the same model.name and model.finetune are needed"
        )
    old = spec["labels"]
    memory = read_memory(prior, family) if recipe.continual.strategy == "replay" else None
    return Continued(prior, old + [x for x in labels if x not in old], memory)


def read_memory(prior: Run, family):
    path = prior.dir / MEMORY
    if not path.is_file():
        return None
    _, state = load_checkpoint(path)
    return family.memory_part(state["rows"])


def save_memory(run: Run, family, pool, budget: int, seed: int) -> None:
    """Keep `budget` examples of `pool` for the next stage: an equal share per label, drawn at random."""
    keep = balanced_memory(family.memory_keys(pool), budget, seed)
    save_checkpoint(run.dir / MEMORY, {}, {"rows": family.memory_rows(pool.subset(keep))})


def text_continual_task(recipe, base, model, old_model, cont: Continued | None, device, fisher_of):
    if cont is None:
        return base
    adversarial = recipe.train.adversarial is not None
    return continual_loss(recipe.continual, base, TEXTS, model, old_model, cont.prior, device, fisher_of, adversarial)


def describe(c, cont: Continued | None) -> str:
    if cont is None:
        return ""
    extra = {"replay": f" with {len(cont.memory) if cont.memory else 0} replayed examples",
             "ewc": f" (lambda {c.ewc_lambda:g})"}  # fmt: skip
    return f"; continues {cont.prior.dir.name} ({c.strategy}{extra.get(c.strategy, '')})"


def warn_unknown_words(tokenizer, texts: list[str], limit: float = 0.05) -> None:
    """A from-scratch model keeps the earlier run's vocabulary: new words read as unknown. Say how many."""
    ids = tokenizer(texts[:2000])["input_ids"]
    total = sum(len(x) for x in ids)
    unknown = sum(t == tokenizer.unk_token_id for x in ids for t in x)
    if total and unknown / total > limit:
        console.print(
            f"[yellow]continual: {unknown / total:.0%} of the new training tokens are not in the earlier run's "
            "vocabulary (they read as unknown); a pretrained encoder's tokenizer has no such gap[/yellow]"
        )
