"""A task family: everything nnrecipe knows about one kind of task, behind one interface, found by name.

Every verb (train, evaluate, predict, export, serve, prune, merge, doctor) asks the registry for the
family of a recipe or a run and calls the method it needs; a verb never switches on a family's name.
A family says what it does not offer by leaving a method to the base class, which refuses in one line.

Adding a family is one module that subclasses `TaskFamily` and decorates it with `@register_family`
(timm's `@register_model`); the modules in BUILTIN are imported the first time the registry is asked.
docs/architecture.md walks through it step by step.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from pydantic import BaseModel

from nnrecipe.engine.config import validated
from nnrecipe.errors import RecipeError, UserError

if TYPE_CHECKING:  # annotations only: the registry imports nothing heavy
    import torch
    from torch import nn

    from nnrecipe.doctor.checks import Check
    from nnrecipe.doctor.subject import Subject
    from nnrecipe.tasks.outputs import Output

DEFAULT_TASK = "image_classification"  # what a recipe without `task:` is

# The built-in families and the module that registers each: a verb that asks for one family imports only
# that module (a run of one family never pays for the others' imports); listing them all imports them all.
BUILTIN = {
    "image_classification": "nnrecipe.tasks.image_classification",
    "text_classification": "nnrecipe.tasks.text_classification",
    "token_classification": "nnrecipe.tasks.token_classification",
    "embedding_classification": "nnrecipe.tasks.embedding_classification",
    "detection": "nnrecipe.tasks.detection",
    "language_modeling": "nnrecipe.tasks.language_modeling",
    "rl": "nnrecipe.rl.family",
}


@dataclass(frozen=True)
class Metric:
    """The number that judges a run (a key of its report and of `evaluate`'s summary) and which way is better."""

    name: str
    mode: str  # "max" or "min"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


@dataclass
class Splits:
    """A family's data, split: whatever one part is (images, texts, sentences, boxed images)."""

    train: Any
    val: Any | None
    test: Any | None
    skipped: list[str] = field(default_factory=list)  # unreadable files, reported in the run
    classes: list[str] | None = None  # the label names, where the source defines them
    meta: dict[str, Any] = field(default_factory=dict)  # facts about the data run.json records

    def reported(self) -> tuple[str, Any]:
        """The split a finished run is reported on: test, else validation."""
        return ("test", self.test) if self.test is not None else ("val", self.val)

    def named(self, split: str) -> Any:
        part = getattr(self, split, None) if split in ("train", "val", "test") else None
        if part is None:
            have = ", ".join(s for s in ("train", "val", "test") if getattr(self, s) is not None)
            raise UserError(f"--split {split}: this run has no {split} split (available: {have})")
        return part


@dataclass
class Inference:
    """A trained run ready to use, the same bundle for every family: the model in eval mode, the labels it
    predicts, what inference needs to prepare inputs (the family's spec), and a tokenizer for text."""

    model: nn.Module
    labels: list[str]
    spec: Any
    tokenizer: Any = None


@dataclass
class LogitsExport:
    """What a family hands `nnrecipe export` when its graph returns logits: a model taking positional
    tensors, real validation batches keyed by input name, their targets (-100 = not scored), and the card's
    facts (input, preprocessing, output)."""

    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    targets: list[torch.Tensor]
    input_names: list[str]
    dynamic: dict[str, dict[int, str]]
    facts: dict[str, Any]
    labels: list[str]
    model_name: str
    exporter: str = "dynamo"  # or "torchscript": torch's TorchScript-based ONNX exporter

    def args(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(batch[n] for n in self.input_names)


@dataclass
class DetectionsExport:
    """A detector for `nnrecipe export`: boxes, labels and scores per image instead of logits, checked on
    real validation images."""

    model: nn.Module
    images: list[torch.Tensor]
    facts: dict[str, Any]
    labels: list[str]
    model_name: str


@dataclass
class ExplainSubject:
    """What `nnrecipe explain` needs from a family: the model (eval, CPU), its labels, `load(paths)` ->
    (model inputs, the raw uint8 images to draw on), the model input of a black image (the baseline), and
    `sample(n)` -> n validation inputs with their labels (for the checks), and `prepare` (uint8 images at the
    training size -> model inputs: what a served request's decoded images go through)."""

    model: nn.Module
    labels: list[str]
    load: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
    black: torch.Tensor
    sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    prepare: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TextExplainSubject:
    """What `nnrecipe explain` needs from a text family: the model (eval, CPU), its labels (or tags), the
    tokenizer and max length its predict uses, its head ("sequence": one label per text, "token": one tag
    per word; an NER explanation is one per predicted entity), the pad id the attributions' baseline puts in
    place of words, and `sample(n)` -> n validation texts with their label ids, or for NER n sentences' words
    with their gold tags (the checks; None: no checks)."""

    model: nn.Module
    labels: list[str]
    tokenizer: Any
    max_length: int
    head: str
    pad_id: int
    sample: Callable[[int], tuple[list, list]] | None = None
    max_entities: int = 20  # an NER text's explanations beyond this many entities are left out


@dataclass
class RobustSubject:
    """What `nnrecipe evaluate --attack / --corruptions` needs: the model (eval), uint8 images of one split
    (N x C x H x W, as decoded), their labels, `normalize` (0-255 float pixels -> model input, differentiable)
    and the label names."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    split: str


@dataclass
class DoctorPlan:
    """What `nnrecipe doctor` needs from a family: the Subject its generic checks (3-9) drive, and the
    family's own data checks (1, 2), each writing into the doctor's output folder."""

    subject: Subject
    data_checks: list[Callable[[Path], Check]]  # each writes what it shows into the doctor's folder


@dataclass
class Stages:
    """A continual-learning recipe's stages: one recipe each, trained in order, each continuing the last."""

    recipes: list[Any]
    names: list[str]  # for the report's accuracy matrix, e.g. "1: 0,1"
    strategy: str


class Unsupported(UserError):
    """A verb this family does not offer."""


class TaskFamily(ABC):
    """The interface every family implements. Class attributes describe it; methods do its work."""

    name: ClassVar[str]  # the value of `task:` in a recipe and of "task" in run.json
    recipe: ClassVar[type[BaseModel]]  # its recipe model (pydantic), documented field by field
    metric: ClassVar[Metric]  # the primary metric of its reports, with its direction
    output: ClassVar[Output | None] = None  # the prediction schema (tasks/outputs.py); None: no predict
    card_metrics: ClassVar[tuple[str, ...]] = ()  # report fields a model card shows
    predict_inputs: ClassVar[str] = "files"  # what `predict` takes: "files" (paths) or "texts"
    hints: ClassVar[dict[str, str]] = {}  # verb -> what to use instead, added to its refusal
    takes_callbacks: ClassVar[bool] = True  # train() accepts engine callbacks (a tuner's per-epoch pruning)
    multi_process: ClassVar[bool] = True  # train() runs as one DDP run under torchrun (train/tune --nproc)
    seed_field: ClassVar[str] = "train.seed"  # the recipe field `train --seeds` sets
    ensemble_inputs: ClassVar[tuple[str, ...]] = ()  # spec keys an ensemble's members must share (see trained)

    # -- recipes -----------------------------------------------------------------------------------------

    def parse_recipe(self, raw: dict[str, Any]) -> Any:
        return validated(self.recipe, raw)

    def anchor_paths(self, recipe: Any, folder: Path) -> None:
        """Resolve files a recipe names relative to the recipe file's folder (in place). Default: none do."""
        return None

    # -- training and use --------------------------------------------------------------------------------

    def train(self, recipe: Any, run: Any, *, resume: bool = False, callbacks: list = ()) -> dict[str, Any]:
        self.unsupported("train")

    def evaluate(self, run: Any, split: str | None = None, data_path: str | None = None) -> dict[str, Any]:
        """Score the run's trained model on one of its splits (None: test, else val) or on other data."""
        self.unsupported("evaluate")

    def predict(self, run: Any, inputs: list[str]) -> list[dict[str, Any]]:
        """One row per input, in the schema of `self.output`."""
        self.unsupported("predict")

    def inference(self, run: Any, device: str = "cpu") -> Inference:
        """The run's model ready for use: `trained` for a trained run, all members averaged for an ensemble,
        its logits divided by the run's temperature once calibrated. A family that offers ensembles and
        calibration implements `trained`; others may override this instead."""
        meta = run.meta()
        if "ensemble" in meta:
            from nnrecipe.tasks.ensemble import ensemble_inference

            inf = ensemble_inference(self, run, device)
        else:
            inf = self.trained(run, device)
        if meta.get("temperature"):  # `nnrecipe calibrate` fitted one
            from nnrecipe.models.calibrated import Tempered

            inf.model = Tempered(inf.model, meta["temperature"]).eval()
        return inf

    def trained(self, run: Any, device: str = "cpu") -> Inference:
        """One trained run's best weights, in eval mode on `device` (what an ensemble's members are)."""
        self.unsupported("ensemble")

    def probabilities(self, run: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities of the run's model on one of its splits, with the labels (`nnrecipe calibrate`)."""
        self.unsupported("calibrate")

    def generate(self, run: Any, prompt: str, **options: Any) -> dict[str, Any]:
        """Continue `prompt` (language models): {prompt, text, new_tokens, tokens_per_s}."""
        self.unsupported("generate")

    # -- deployment ----------------------------------------------------------------------------------------

    def predictor(self, run: Any, onnx_path: Path | None = None, precision: str = "fp32") -> Any:
        """The object `nnrecipe serve` batches requests into (see tasks/serving.py's Predictor)."""
        self.unsupported("serve")

    def export_subject(self, run: Any) -> LogitsExport | DetectionsExport:
        self.unsupported("export")

    def explain_subject(self, run: Any) -> ExplainSubject | TextExplainSubject:
        self.unsupported("explain")

    def example_keys(self, run: Any, split: str) -> list[str]:
        """What names each example of `split`, in the order `probabilities` scores them (`evaluate --groups`
        maps these to groups): image paths, texts."""
        self.unsupported("fairness")

    def example_groups(self, run: Any, split: str) -> list[str] | None:
        """Each example's group from the run's own data (a recipe's group column), in `example_keys`' order;
        None: the data names no groups (`evaluate --groups FILE` can)."""
        return None

    def robust_subject(self, run: Any, split: str | None = None, limit: int = 1000) -> RobustSubject:
        """Up to `limit` images of `split` (default: test, else val) for adversarial and corruption accuracy."""
        self.unsupported("robustness")

    def prune_start(self, recipe: Any, model: nn.Module, folder: Path) -> None:
        """Point a fine-tuning recipe at pruned weights (in place), in the form this family starts from."""
        self.unsupported("prune --finetune-epochs")

    def check_prune_finetune(self, recipe: Any) -> None:
        """Raise UserError when a pruned model of this recipe cannot be fine-tuned (before anything is written)."""
        return None

    def run_files(self, run: Any) -> list[Path]:
        """Files beside the weights that `inference` reads (a fitted tokenizer...): a run derived from this
        one without training (a pruned copy) takes them along."""
        return []

    def prune_keep_whole(self, model: nn.Module) -> set[str]:
        """Module names that structured pruning must leave whole (their outputs are the answers)."""
        return set()

    def merge_class(self) -> Any:
        """The transformers Auto class a merged model folder loads with."""
        self.unsupported("merge")

    def doctor(self, recipe: Any) -> DoctorPlan:
        self.unsupported("doctor")

    # -- continual learning ---------------------------------------------------------------------------------

    def continue_from(self, recipe: Any, path: Path) -> None:
        """Make `recipe` continue the run at `path` (in place): its weights, classes and strategy state."""
        self.unsupported("continual")

    def continual_stages(self, recipe: Any) -> Stages | None:
        """The recipe's continual-learning stages; None: the recipe is one run."""
        return None

    def continual_holdout(self, recipe: Any) -> Any:
        """The held-out data of one stage's `recipe`, read once per continual run and scored after every stage."""
        self.unsupported("continual")

    def continual_score(self, run: Any, recipe: Any, holdout: Any) -> float:
        """The primary metric of the run's model on `holdout` (continual_holdout of `recipe`, one stage's)."""
        self.unsupported("continual")

    # -- helpers -------------------------------------------------------------------------------------------

    def unsupported(self, verb: str) -> NoReturn:
        """Refuse a verb in one line: which families offer it, and what to use instead where there is a hint."""
        hint = f"; {self.hints[verb]}" if verb in self.hints else ""
        if verb in VERBS:
            method, noun = VERBS[verb]
            offering = [n for n in family_names() if get_family(n).offers(verb)]
            raise Unsupported(f"{self.name}: no {noun} for {self.name} runs (offered for {', '.join(offering)}){hint}")
        raise Unsupported(f"{verb}: not offered for {self.name} runs{hint}")

    def offers(self, verb: str) -> bool:
        """Whether this family implements the method that carries `verb` (a key of VERBS)."""
        method = VERBS[verb][0]
        return getattr(type(self), method) is not getattr(TaskFamily, method)

    def require(self, verb: str) -> TaskFamily:
        """This family, or the one-line refusal of `verb`; verbs call it before doing any work."""
        if not self.offers(verb):
            self.unsupported(verb)
        return self


# verb -> (the method that carries it, the noun its refusal names)
VERBS = {
    "train": ("train", "training"),
    "evaluate": ("evaluate", "evaluation"),
    "predict": ("predict", "prediction"),
    "generate": ("generate", "generation"),
    "serve": ("predictor", "serving"),
    "export": ("export_subject", "export"),
    "prune": ("prune_start", "pruning"),
    "merge": ("merge_class", "merging"),
    "doctor": ("doctor", "nnrecipe doctor"),
    "ensemble": ("trained", "ensembles"),
    "calibrate": ("probabilities", "calibration"),
    "explain": ("explain_subject", "explanations"),
    "robustness": ("robust_subject", "adversarial and corruption evaluation"),
    "fairness": ("example_keys", "fairness by group"),
    "continual": ("continue_from", "continual learning"),
}

_REGISTRY: dict[str, TaskFamily] = {}
_loaded: set[str] = set()


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: make a family known under `cls.name` (a later registration under the same name wins)."""
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_family(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtin(name: str) -> None:
    """Import the module of one built-in family, once (a plugin registered under that name still wins)."""
    if name in BUILTIN and name not in _loaded:
        _loaded.add(name)
        plugin = _REGISTRY.pop(name, None)
        import_module(BUILTIN[name])
        if plugin is not None:
            _REGISTRY[name] = plugin


def family_names() -> list[str]:
    """Every registered family: the built-in ones in BUILTIN's order (whatever was imported first), then
    the others in the order they registered."""
    for name in BUILTIN:
        _load_builtin(name)
    rank = {module: i for i, module in enumerate(BUILTIN.values())}
    return sorted(_REGISTRY, key=lambda n: rank.get(type(_REGISTRY[n]).__module__, len(BUILTIN)))


def get_family(name: str) -> TaskFamily:
    _load_builtin(name)
    if name not in _REGISTRY:
        raise RecipeError(f"recipe error: task: must be one of {', '.join(family_names())} (got {name!r})")
    return _REGISTRY[name]


def family_of(run: Any) -> TaskFamily:
    """The family a run directory belongs to (run.json's task, else its recipe's)."""
    task = run.meta().get("task")
    if task is None:
        task = run.raw_recipe().get("task", DEFAULT_TASK)
    return get_family(task)
