"""Configuration of the engine (optimiser, schedule, loop, tracking): the recipe sections every task shares,
and validation that turns pydantic's errors into one readable line per problem.

They live with the engine so the engine depends on nothing above it; each task family composes them.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nnrecipe.errors import RecipeError

S = TypeVar("S", bound=BaseModel)

# A seed is what NumPy's and scikit-learn's generators take, 0 to 2**32 - 1: larger ones ended in an
# overflow traceback deep in torch's generator, negative ones in NumPy's.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def _as_name(value: Any) -> Any:
    # YAML reads `classes: [0, 1]` (folders 0/ and 1/) as numbers, which were refused as "not a valid string"
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _distinct(names: list[str]) -> list[str]:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a class listed twice got two head rows and split its examples between them
        raise ValueError(f"listed more than once: {', '.join(twice)}")
    return names


# A class or label name as a recipe lists it; a list of them names each once.
ClassName = Annotated[str, BeforeValidator(_as_name)]
ClassNames = Annotated[list[ClassName], AfterValidator(_distinct)]


def check_seed(seed: int | None, option: str = "--seed") -> int | None:
    """A seed given on the command line, held to the recipe's range (None passes: the default applies)."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise RecipeError(f"{option}: a seed from 0 to {MAX_SEED} (got {seed})")
    return seed


def _kinds(annotation: Any) -> set[Any]:
    """The types a field's annotation admits at its top level (through Optional, unions and Annotated)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    return {annotation}


class Section(BaseModel):
    # Unknown keys are errors (a typo must never be silently ignored); assignment is validated too; no
    # number may be inf or nan (optim.lr=inf passed `gt=0` and trained a run that diverged at once).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 for a number: `epochs: yes` (YAML's true) trained one epoch, and
        `lr: true` at 1.0."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("a number, not true or false")
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def with_absolute_paths(section: S) -> S:
    """A copy whose relative file paths (data files, init weights, an earlier run) are absolute, for the
    recipe.yaml a run keeps: a later verb started in another folder read `data.path: tree` from there
    (evaluate said "folder not found: tree"). track.runs_dir stays as given: it says where new runs go."""
    changes: dict[str, Any] = {}
    for name, value in section:
        if isinstance(value, Section):
            changes[name] = with_absolute_paths(value)
        elif isinstance(value, Path) and not value.is_absolute() and name != "runs_dir":
            changes[name] = Path(os.path.abspath(value.expanduser()))  # ~/data is the home's, as loaders read it
    return section.model_copy(update=changes)


FOLDER_NAME = "one folder name, without / or .."


def is_folder_name(name: str) -> bool:
    """A run's or study's name is one folder under runs_dir: `../x` wrote outside it, `a/b` a folder deeper
    than `nnrecipe runs` looks."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\")


def check_folder_name(name: str | None, option: str) -> str | None:
    """`name` (None passes), or a RecipeError naming the option (train --name, ensemble --name, tune --study)."""
    if name is not None and not is_folder_name(name):
        raise RecipeError(f"{option}: {FOLDER_NAME} (got {name!r})")
    return name


def validated(cls: type[S], raw: dict[str, Any], options: bool = False) -> S:
    """`cls` built from `raw`; RecipeError with a line per problem naming the field and what is allowed.
    `options`: the values came from command-line options, so a problem names the option (--top-k)."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        lines = [explain(err, cls) for err in merged_unions(e.errors())]
        if options:
            lines = [re.sub(r"^recipe error: (\w+):", lambda m: f"--{m[1].replace('_', '-')}:", line) for line in lines]
        raise RecipeError("\n".join(lines)) from None


UNION_BRANCH = re.compile(r"(literal\[.*\]|bool|int|float|str)")
BRANCH_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def merged_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic reports a value that fits no member of a union (`stream: auto | bool`) once per member,
    each at the field's path plus the member's name (`data.stream.literal['auto']`, `data.stream.bool`):
    those become one error at the field's own path listing what it takes."""
    merged: list[dict[str, Any]] = []
    unions: dict[tuple, dict[str, Any]] = {}
    for err in errors:
        loc = err["loc"]
        if len(loc) < 2 or not isinstance(loc[-1], str) or not UNION_BRANCH.fullmatch(loc[-1]):
            merged.append(err)
            continue
        if loc[:-1] not in unions:
            unions[loc[:-1]] = {"loc": loc[:-1], "type": "union", "input": err.get("input"), "takes": []}
            merged.append(unions[loc[:-1]])
        if err["type"] == "literal_error":
            takes = err.get("ctx", {}).get("expected")
        elif err["type"].endswith(("_type", "_parsing")):  # not that kind of value at all
            takes = BRANCH_WORDS[loc[-1]]
        else:  # that kind, out of its range: "greater than or equal to 0"
            takes = err["msg"].removeprefix("Input should be ")
        unions[loc[:-1]]["takes"].append(takes)
    return merged


def explain(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as `recipe error: <field>: <problem> (got <value>)`, with a close match for typos."""
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        *parent, name = [str(p) for p in err["loc"]]
        allowed = fields_at(root, parent)
        hint = difflib.get_close_matches(name, allowed, n=1)
        where = ".".join(parent) or "the recipe"
        line = f"recipe error: unknown field '{loc}' in {where}; allowed: {', '.join(allowed)}"
        return line + (f" (did you mean '{'.'.join([*parent, hint[0]])}'?)" if hint else "")
    if kind == "union":
        *most, last = err["takes"]
        return f"recipe error: {loc}: {', '.join(most)}{' or ' if most else ''}{last} (got {got!r})"
    msg = err["msg"]
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        msg = f"must be one of {allowed}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc or msg.startswith(f"{loc}."):  # whole-recipe checks; a section's check that names its field
        return f"recipe error: {msg}"
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"recipe error: {loc}: {msg}{shown}"


def sub_section(annotation: Any) -> type[BaseModel] | None:
    """The Section a field holds (also inside `X | None`), or None for a plain value."""
    return next(
        (
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ),
        None,
    )


def fields_at(root: type[BaseModel], parent: list[str]) -> list[str]:
    """The field names of the section at `parent` (a path of field names from `root`)."""
    model = root
    for name in parent:
        field = model.model_fields.get(name)
        sub = sub_section(getattr(field, "annotation", None))
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


class Optim(Section):
    """The optimiser (torch.optim)."""

    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd (with momentum/nesterov), adam or adamw.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate (onecycle: its max_lr).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="SGD Nesterov momentum (needs momentum > 0).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW betas.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 (SGD/Adam) or decoupled (AdamW) weight decay.")
    decay_bias_and_norm: bool = Field(
        False, description="Apply weight decay to biases and normalisation weights too (usually off)."
    )
    fused: bool = Field(
        True,
        description="torch's fused SGD/Adam/AdamW kernel (one pass over all parameters; the same update to "
        "rounding, faster on CPU and GPU).",
    )


class Schedule(Section):
    """Learning-rate schedule, stepped once per optimiser step."""

    name: Literal["constant", "step", "linear", "cosine", "onecycle"] = Field(
        "onecycle", description="constant, step, linear (decay to min_lr_ratio), cosine or onecycle."
    )
    warmup_epochs: float = Field(
        0.0, ge=0, description="Linear warmup from 0 in front of the schedule, in epochs (fractions allowed)."
    )
    step_epochs: int = Field(10, gt=0, description="step: decay every this many epochs.")
    gamma: float = Field(0.1, gt=0, le=1, description="step: multiply the LR by this at each decay.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="linear/cosine: final LR as a fraction of the peak.")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of training spent increasing the LR.")


class EarlyStopping(Section):
    """Stop when a logged metric stops improving."""

    metric: str = Field("val_loss", description="Any metric in metrics.jsonl, e.g. val_loss, val_accuracy.")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: max for accuracy/f1, min otherwise.")
    patience: int = Field(5, gt=0, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class Swa(Section):
    """Stochastic weight averaging (torch.optim.swa_utils): from `start_epoch` on, the learning rate anneals to
    `lr` (SWALR) and the weights are averaged at every epoch's end; the average is the run's model."""

    start_epoch: int | None = Field(
        None, ge=1, description="First epoch (1-based) whose weights are averaged; null = the epoch after 75% of them."
    )
    lr: float | None = Field(
        None, gt=0, description="The constant SWA learning rate; null = hold the rate the schedule reached."
    )
    anneal_epochs: int = Field(1, ge=0, description="Epochs over which the rate moves to `lr` (0 = at once).")
    anneal_strategy: Literal["cos", "linear"] = Field("cos", description="Shape of that move: cos or linear.")


_FRACTION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*")


def fraction(text: str) -> float | None:
    """'8/255' or '0.03' -> the number it names; None for anything else (a zero denominator included)."""
    m = _FRACTION.fullmatch(text)
    if not m or (m.group(2) is not None and float(m.group(2)) == 0):
        return None
    return float(m.group(1)) / float(m.group(2) or 1)


class Adversarial(Section):
    """Adversarial training: every batch is also attacked and trained on (image and text classification, NER).

    Images: FGSM or PGD in an L-infinity ball around each image in pixel space, so epsilon = 2/255 means two
    grey levels whatever the recipe's normalisation. Text and NER: FGM (Miyato et al., 2017) or PGD in the
    token embeddings, an L2 ball of radius epsilon around each example's embedded sequence."""

    method: Literal["fgsm", "fgm", "pgd"] = Field(
        "fgsm",
        description="Images: fgsm (one step) or pgd (random start, `steps` steps). Text and NER: fgm (one "
        "gradient step of L2 length epsilon) or pgd (`steps` steps, projected back to the ball).",
    )
    epsilon: float | None = Field(
        None,
        gt=0,
        description="Radius: in pixel space [0, 1] for images (a fraction such as 8/255 works; default 8/255), "
        "the L2 norm of an example's embedding perturbation for text (default 0.25; MiniLM's token embeddings "
        "have a norm of ~1.1).",
    )
    steps: int = Field(3, ge=1, description="PGD steps (each 2.5 epsilon / steps).")
    clean: bool = Field(
        True,
        description="Train on the clean and the attacked batch, half the loss each (Goodfellow et al.); false: "
        "the attacked batch only (Madry et al.).",
    )

    @model_validator(mode="before")
    @classmethod
    def _fraction(cls, data: Any) -> Any:
        """'8/255' in YAML -> 0.0314..."""
        value = data.get("epsilon") if isinstance(data, dict) else None
        parsed = fraction(value) if isinstance(value, str) else None
        return {**data, "epsilon": parsed} if parsed is not None else data  # else the float check names it


class Train(Section):
    """The training loop."""

    epochs: int = Field(10, gt=0, description="Number of passes over the training split.")
    max_steps: int | None = Field(
        None,
        gt=0,
        description="Train for this many optimiser steps instead of `epochs` (the schedule spans them; validation "
        "still runs at each epoch's end, and after the last step); null = epochs decide.",
    )
    batch_size: int = Field(128, gt=0, description="Examples per optimiser step (per process, before accumulation).")
    eval_batch_size: int = Field(512, gt=0, description="Examples per evaluation batch.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimiser step.")
    clip_grad_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value.")
    clip_grad_value: float | None = Field(None, gt=0, description="Clip each gradient element to [-v, v].")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA devices that support it and for transformer tasks on CPUs with native bf16 units (AMX or AVX512-BF16); for other models on such CPUs (detection excepted), bf16 when a timed training step on the first batch is at least 1.1x faster (remembered per machine and model); fp32 elsewhere. The choice and its reason are printed at start.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA when present, else CPU.")
    seed: Seed = Field(0, description="Seeds Python, NumPy, torch, data order and augmentation.")
    ema: bool = Field(False, description="Keep an exponential moving average of the weights and evaluate/save it.")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per optimiser step.")
    swa: Swa | None = Field(
        None,
        description="Stochastic weight averaging; the run's model is the average (its report says so); null = off.",
    )
    average_last: int | None = Field(
        None,
        ge=2,
        description="The run's model is the mean of the last this many epochs' weights (BatchNorm statistics "
        "recomputed); null = off.",
    )
    monitor: str = Field("val_accuracy", description="Metric that chooses the best checkpoint.")
    early_stopping: EarlyStopping | None = Field(None, description="Stop early when `metric` stalls; null = off.")
    adversarial: Adversarial | None = Field(
        None, description="Adversarial training (image and text classification, NER); null = off."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How the processes of a multi-process run (--nproc, torchrun) share the model: ddp, each "
        "holds all of it and gradients are averaged; fsdp, PyTorch FSDP2: parameters, gradients and optimiser "
        "state sharded across the processes, each transformer block gathered only while it computes (text "
        "and token classification, language modelling; CPU over gloo and CUDA over NCCL). Checkpoints are "
        "whole either way. One process: no difference.",
    )
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads; null = torch's default.")
    log_every: int = Field(50, gt=0, description="Steps between non-finite-loss checks and TensorBoard step logs.")

    @model_validator(mode="after")
    def _one_average(self) -> Train:
        chosen = [n for n, on in (("ema", self.ema), ("swa", self.swa), ("average_last", self.average_last)) if on]
        if len(chosen) > 1:
            raise ValueError(f"{chosen[0]} and {chosen[1]} both average the weights; choose one")
        if chosen and self.strategy == "fsdp":  # the averaged copy would be a second, unsharded model
            raise ValueError(f"strategy: fsdp does not combine with {chosen[0]} (its averaged copy is not sharded); "
                             "use strategy: ddp, or drop the averaging")  # fmt: skip
        if self.adversarial is not None and self.strategy == "fsdp":  # it perturbs whole weights between passes
            raise ValueError("strategy: fsdp does not combine with adversarial training; use strategy: ddp")
        if self.precision == "fp16" and self.strategy == "fsdp":  # the loss scaler is not tried on sharded gradients
            raise ValueError("strategy: fsdp trains in bf16 or fp32; precision fp16 goes with strategy: ddp")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps the whole run takes."""
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def planned_epochs(self, steps_per_epoch: int) -> int:
        """Epochs the run starts (with max_steps, the last one may stop part-way)."""
        return self.epochs if self.max_steps is None else -(-self.max_steps // max(1, steps_per_epoch))


class Track(Section):
    """Where results go and what is logged."""

    runs_dir: Path = Field(Path("runs"), description="Parent folder of run directories.")
    name: str | None = Field(
        None, description="Run directory name (one folder name, no / or ..); default <recipe>-<timestamp>."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    wandb: bool = Field(False, description="Log to Weights & Biases in offline mode (needs `pip install wandb`).")
    mlflow: bool = Field(
        False,
        description="Log to MLflow: params, per-epoch metrics, then the report, plots and best weights as artefacts (needs the mlflow extra).",
    )
    mlflow_uri: str = Field(
        "mlruns",
        description="MLflow tracking URI: a folder (a local file store, relative to the current folder) or a server's http(s):// URI.",
    )
    mlflow_experiment: str = Field("nnrecipe", description="MLflow experiment the run is logged under.")
    progress: bool = Field(True, description="Show a progress bar per epoch.")
    plots: bool = Field(True, description="Save PNG plots (curves, confusion matrix, misclassified examples).")

    @model_validator(mode="after")
    def _one_folder_name(self):
        if self.name is not None and not is_folder_name(self.name):
            raise ValueError(f"track.name: {FOLDER_NAME} (got {self.name!r})")
        return self
