"""The recipe: typed, documented configuration for a run, loaded from YAML with `--set a.b=c` overrides.

Every field has a default that trains well, so a recipe only says what differs. Validation errors are
turned into one readable line per problem that names the field and the allowed values.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from nnrecipe.engine.config import Optim, Schedule, Track, Train
from nnrecipe.engine.config import Section as _Section
from nnrecipe.errors import RecipeError


class Augment(_Section):
    """Training-time augmentation (torchvision.transforms.v2 semantics), applied to whole batches."""

    crop_padding: int = Field(
        0, ge=0, description="Random crop of the original size after zero-padding this many pixels per side; 0 = off."
    )
    hflip: bool = Field(False, description="Random horizontal flip with probability 0.5.")
    rotation: float = Field(
        0.0, ge=0, le=180, description="Random rotation in [-rotation, +rotation] degrees; 0 = off."
    )
    scale: tuple[float, float] | None = Field(
        None, description="RandomResizedCrop area range, e.g. [0.6, 1.0]; null = off."
    )
    color_jitter: float = Field(0.0, ge=0, le=1, description="Brightness/contrast/saturation jitter strength; 0 = off.")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v):
        if v is not None and not (0 < v[0] <= v[1] <= 1):
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return v


class Normalize(_Section):
    """Per-channel mean and standard deviation in [0, 1] pixel units."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need one value per channel and std > 0")
        return self


class Data(_Section):
    """Where the images come from and how they are split."""

    source: Literal["digits", "cifar10", "imagefolder"] = Field(
        "digits",
        description="digits: scikit-learn's embedded 8x8 digits; cifar10: torchvision's CIFAR-10; imagefolder: a class-per-folder tree.",
    )
    path: Path | None = Field(
        None,
        description="cifar10: folder holding cifar-10-batches-py (default ~/.cache/nnrecipe/cifar10); imagefolder: the tree (with train/ val/ test/ subfolders, or one tree to split).",
    )
    download: bool = Field(True, description="cifar10: download when the files are missing and the network allows.")
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of the training split held back for validation when the source has no val split.",
    )
    test_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Fraction held back for testing when the source has no test split (digits, single-tree imagefolder).",
    )
    split_seed: int = Field(
        0, description="Seed of the stratified split, independent of the training seed so splits stay fixed."
    )
    image_size: int | None = Field(
        None,
        gt=0,
        description="Resize images to this square size; null = the source's native size (imagefolder: the first image's).",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Convert images to 1 (grey) or 3 (RGB) channels; null = the source's own."
    )
    normalize: Literal["auto", "none"] | Normalize = Field(
        "auto", description="auto: mean/std computed on the training split; none; or {mean: [...], std: [...]}."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N training examples (quick experiments).")
    augment: Augment = Field(default_factory=Augment)


class Model(_Section):
    """Which network to build and how to initialise it."""

    name: str = Field(
        "convnet", description="convnet, lenet5, resnet18, resnet34, mlp, tv:<torchvision model>, timm:<timm model>."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier (built-in models).")
    init_from: Path | None = Field(
        None,
        description="Weights to start from: a .safetensors file, a torch state dict (.pt/.pth, loaded weights_only) or a run directory. Layers whose shapes differ (the head) are re-initialised.",
    )
    freeze: Literal["none", "backbone"] = Field(
        "none", description="backbone: train only the classifier head (transfer learning)."
    )
    unfreeze_at_epoch: int | None = Field(
        None,
        ge=0,
        description="Epoch (0-based) at which a frozen backbone starts training, at backbone_lr_scale x the LR.",
    )
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=1, description="LR multiplier of the backbone's parameter group relative to the head."
    )
    channels_last: bool = Field(
        False, description="Use the channels_last memory format (often faster for convnets on GPU)."
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from nnrecipe.models import check_model_name

        check_model_name(v)
        return v


class Recipe(_Section):
    """A whole run: what to learn (task, data, model) and how (optim, schedule, train), and where it goes (track)."""

    task: Literal["image_classification"] = Field("image_classification", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    optim: Optim = Field(default_factory=Optim)
    schedule: Schedule = Field(default_factory=Schedule)
    train: Train = Field(default_factory=Train)
    track: Track = Field(default_factory=Track)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model.unfreeze_at_epoch is not None and self.model.freeze == "none":
            raise ValueError("model.unfreeze_at_epoch needs model.freeze: backbone")
        if self.optim.nesterov and self.optim.name == "sgd" and self.optim.momentum == 0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        return self


TRANSFORMER_DEFAULTS = {
    "optim": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01},
    "schedule": {"name": "linear", "warmup_epochs": 0.1},
    "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 128, "clip_grad_norm": 1.0},
}


def _merge_defaults(raw: Any, defaults: dict[str, dict[str, Any]]) -> Any:
    """A task's own defaults for the shared sections, kept for every field the recipe does not set
    (so `train: {epochs: 1}` still clips at 1.0 for a transformer)."""
    if isinstance(raw, dict):
        raw = dict(raw)
        for section, values in defaults.items():
            given = raw.get(section)
            if given is None or isinstance(given, dict):
                raw[section] = {**values, **(given or {})}
    return raw


class TextData(_Section):
    """Text classification files: CSV/TSV (with a header) or JSONL, one example per row."""

    train: Path = Field(Path("data/sst2/train.tsv"), description="Training file.")
    val: Path | None = Field(None, description="Validation file; null = hold back val_fraction of train.")
    test: Path | None = Field(None, description="Test file; null = report on validation.")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description="auto follows the file extension.")
    text_column: str = Field("sentence", description="Column (or JSON key) holding the text.")
    text_pair_column: str | None = Field(None, description="Second text for sentence-pair tasks; null = single text.")
    label_column: str = Field("label", description="Column holding the label (a name or an id).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held back from train when data.val is null.")
    split_seed: int = Field(0, description="Seed of that split.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training rows.")
    max_length: int = Field(128, gt=1, description="Truncate to this many tokens.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (less padding, same randomness).")


class TextModel(_Section):
    """A pretrained Hugging Face encoder with a task head, fine-tuned fully or parameter-efficiently (peft)."""

    name: str = Field(
        "minilm", description="minilm (the packaged all-MiniLM-L6-v2), a local model folder, or a hub id (online only)."
    )
    finetune: Literal["full", "frozen", "lora", "adalora", "prefix", "ia3"] = Field(
        "full",
        description="full; frozen (linear probe on a frozen encoder); lora, adalora, prefix (prefix tuning), ia3: peft methods.",
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank (AdaLoRA: the target average rank).")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: list[str] = Field(
        ["query", "value"], description="Modules LoRA/AdaLoRA adapt (names inside the encoder)."
    )
    prefix_tokens: int = Field(
        16, gt=0, description="Prefix tuning: virtual tokens prepended to every layer's keys and values."
    )

    def peft_options(self) -> dict:
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "targets": self.lora_targets,
            "prefix_tokens": self.prefix_tokens,
        }


class TextRecipe(_Section):
    """Text classification by fine-tuning a pretrained transformer."""

    task: Literal["text_classification"] = Field("text_classification", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    data: TextData = Field(default_factory=TextData)
    model: TextModel = Field(default_factory=TextModel)
    optim: Optim = Field(default_factory=lambda: Optim(**TRANSFORMER_DEFAULTS["optim"]))
    schedule: Schedule = Field(default_factory=lambda: Schedule(**TRANSFORMER_DEFAULTS["schedule"]))
    train: Train = Field(default_factory=lambda: Train(**TRANSFORMER_DEFAULTS["train"]))
    track: Track = Field(default_factory=Track)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        return _merge_defaults(raw, TRANSFORMER_DEFAULTS)


NER_DEFAULTS = TRANSFORMER_DEFAULTS | {"train": TRANSFORMER_DEFAULTS["train"] | {"monitor": "val_f1"}}


class TokenData(_Section):
    """NER files: CoNLL columns (word ... tag, blank line between sentences) or JSONL (tokens, tags); IOB1 becomes IOB2."""

    train: Path = Field(Path("data/conll2003/train.txt"), description="Training file.")
    val: Path | None = Field(None, description="Validation file; null = hold back val_fraction of train.")
    test: Path | None = Field(None, description="Test file; null = report on validation.")
    format: Literal["auto", "conll", "jsonl"] = Field(
        "auto", description="auto: .jsonl/.json are JSONL, anything else CoNLL columns."
    )
    token_column: int = Field(0, description="CoNLL: column of the word (0 = first).")
    tag_column: int = Field(-1, description="CoNLL: column of the tag (-1 = last).")
    tokens_key: str = Field("tokens", description="JSONL: key of the word list.")
    tags_key: str = Field("tags", description="JSONL: key of the tag list.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held back from train when data.val is null.")
    split_seed: int = Field(0, description="Seed of that split.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training sentences.")
    max_length: int = Field(128, gt=1, description="Truncate to this many sub-tokens; words beyond it are predicted O.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (less padding, same randomness).")


class TokenRecipe(_Section):
    """Token classification (NER) by fine-tuning a pretrained transformer."""

    task: Literal["token_classification"] = Field("token_classification", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    data: TokenData = Field(default_factory=TokenData)
    model: TextModel = Field(default_factory=TextModel)
    optim: Optim = Field(default_factory=lambda: Optim(**TRANSFORMER_DEFAULTS["optim"]))
    schedule: Schedule = Field(default_factory=lambda: Schedule(**TRANSFORMER_DEFAULTS["schedule"]))
    train: Train = Field(default_factory=lambda: Train(**NER_DEFAULTS["train"]))
    track: Track = Field(default_factory=Track)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        return _merge_defaults(raw, NER_DEFAULTS)


class DetectionData(_Section):
    """Object-detection data: the generated shapes set, or YOLO, COCO or Pascal VOC annotations."""

    format: Literal["shapes", "yolo", "coco", "voc"] = Field(
        "shapes",
        description="shapes: a generated set (squares, circles, triangles; no files needed); yolo: images/<split> + labels/<split>; coco: instances JSON; voc: Annotations/ + JPEGImages/ + ImageSets/Main/.",
    )
    path: Path | None = Field(
        None,
        description="yolo/voc: the dataset folder; coco: the folder annotation paths are relative to; shapes: where to write the set (default ~/.cache/nnrecipe).",
    )
    train: str | None = Field(
        None,
        description="yolo: split name (default: data.yaml's train); coco: the instances JSON; voc: image-set name (e.g. trainval).",
    )
    val: str | None = Field(
        None,
        description="Validation split, same form as train; null = data.yaml's val (yolo) or hold back val_fraction of train.",
    )
    test: str | None = Field(None, description="Test split; null = report on validation.")
    classes: list[str] | None = Field(
        None,
        description="Class names in label order; null = from data.yaml/classes.txt (yolo), the categories (coco) or the annotations (voc).",
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held back from train when there is no val split.")
    split_seed: int = Field(0, description="Seed of that split.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training images.")
    hflip: bool = Field(True, description="Random horizontal flips (boxes flipped with the image) in training.")


class DetectionModel(_Section):
    """A torchvision Faster R-CNN whose box head is sized for the data's classes."""

    name: Literal[
        "tiny", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"
    ] = Field(
        "tiny",
        description="tiny: a small from-scratch backbone (shapes, tests, CPU demos); the others: torchvision's Faster R-CNN architectures.",
    )
    weights: Path | None = Field(
        None,
        description="Local detector weights to fine-tune from (e.g. torchvision's COCO .pth, or a run directory); the box predictor is re-initialised for your classes.",
    )
    backbone_weights: Path | None = Field(
        None,
        description="Local ImageNet weights for the backbone alone (e.g. resnet50 .pth), when no detector weights are given.",
    )
    trainable_backbone_layers: int = Field(
        3,
        ge=0,
        le=6,
        description="With pretrained weights: how many top backbone stages train (BatchNorm stays frozen); from scratch everything trains.",
    )
    min_size: int = Field(
        512,
        gt=0,
        description="Images are resized so the short side is this many pixels (torchvision uses 800; smaller is much faster on CPU).",
    )
    max_size: int = Field(853, gt=0, description="...and the long side at most this many.")
    score_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="predict/serve: report detections at least this confident (mAP is computed over all of them).",
    )


class EmbeddingModel(_Section):
    """A frozen sentence encoder and class prototypes: no gradient step at all."""

    name: str = Field(
        "minilm",
        description="minilm (the packaged all-MiniLM-L6-v2 sentence encoder) or a local sentence-transformers folder.",
    )
    mode: Literal["zeroshot", "fewshot"] = Field(
        "fewshot",
        description="zeroshot: prototypes are the embedded label descriptions; fewshot: the mean embedding of `shots` training examples per label.",
    )
    shots: int = Field(8, gt=0, description="fewshot: examples per label drawn (seeded) from the training split.")
    label_texts: dict[str, str] = Field(
        default_factory=dict,
        description="zeroshot: a description per label (default: the label itself), put into `template`.",
    )
    template: str = Field(
        "{}", description="zeroshot: how a label description becomes a sentence, e.g. 'This review is {}.'"
    )
    seed: int = Field(0, description="Seed of the few-shot draw.")


class EmbeddingRecipe(_Section):
    """Zero- or few-shot text classification from sentence embeddings (nearest class prototype by cosine)."""

    task: Literal["embedding_classification"] = Field("embedding_classification", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    data: TextData = Field(default_factory=TextData)
    model: EmbeddingModel = Field(default_factory=EmbeddingModel)
    track: Track = Field(default_factory=Track)


DETECTION_DEFAULTS = {
    "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 12, "batch_size": 4, "eval_batch_size": 8, "clip_grad_norm": 10.0, "monitor": "val_map"},
}


class DetectionRecipe(_Section):
    """Object detection: Faster R-CNN trained or fine-tuned on boxes, reported as COCO mAP."""

    task: Literal["detection"] = Field("detection", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    data: DetectionData = Field(default_factory=DetectionData)
    model: DetectionModel = Field(default_factory=DetectionModel)
    optim: Optim = Field(default_factory=lambda: Optim(**DETECTION_DEFAULTS["optim"]))
    schedule: Schedule = Field(default_factory=lambda: Schedule(**DETECTION_DEFAULTS["schedule"]))
    train: Train = Field(default_factory=lambda: Train(**DETECTION_DEFAULTS["train"]))
    track: Track = Field(default_factory=Track)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        return _merge_defaults(raw, DETECTION_DEFAULTS)

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.format in ("yolo", "coco", "voc") and self.data.path is None:
            raise ValueError(f"data.path is required with data.format: {self.data.format}")
        if self.data.format == "coco" and self.data.train is None:
            raise ValueError("data.train: give the COCO instances JSON (relative to data.path)")
        if self.data.format == "voc" and self.data.train is None:
            raise ValueError("data.train: give the VOC image-set name (ImageSets/Main/<name>.txt), e.g. trainval")
        if self.model.min_size > self.model.max_size:
            raise ValueError("model.min_size must not exceed model.max_size")
        return self


# ---------------------------------------------------------------------------------------------------
# Loading, overrides and readable errors


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read a YAML recipe, apply `a.b=c` overrides, validate. Raises RecipeError with readable lines."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (data, model, optim, ...)")
    for item in overrides:
        apply_override(raw, item)
    recipe = validate_recipe(raw)
    env = getattr(recipe, "env", None)
    if (
        env is not None
        and env.map
        and "\n" not in env.map
        and not Path(env.map).exists()
        and (path.parent / env.map).is_file()
    ):
        env.map = str(path.parent / env.map)  # map files may be given relative to the recipe
    return recipe


def recipe_classes() -> dict[str, type[BaseModel]]:
    """The recipe model of each task family, keyed by the value of `task:`."""
    from nnrecipe.rl.config import RLRecipe

    return {
        "image_classification": Recipe,
        "text_classification": TextRecipe,
        "token_classification": TokenRecipe,
        "embedding_classification": EmbeddingRecipe,
        "detection": DetectionRecipe,
        "rl": RLRecipe,
    }


def validate_recipe(raw: dict[str, Any]) -> Any:
    task = raw.get("task", "image_classification")
    classes = recipe_classes()
    if task not in classes:
        raise RecipeError(f"recipe error: task: must be one of {', '.join(classes)} (got {task!r})")
    try:
        return classes[task].model_validate(raw)
    except ValidationError as e:
        raise RecipeError("\n".join(_explain(err, classes[task]) for err in e.errors())) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 0.1 is a float, [1,2] a list)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _explain(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        *parent, name = [str(p) for p in err["loc"]]
        allowed = _fields_at(root, parent)
        hint = difflib.get_close_matches(name, allowed, n=1)
        where = ".".join(parent) or "the recipe"
        line = f"recipe error: unknown field '{loc}' in {where}; allowed: {', '.join(allowed)}"
        return line + (f" (did you mean '{'.'.join([*parent, hint[0]])}'?)" if hint else "")
    msg = err["msg"]
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        msg = f"must be one of {allowed}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc:  # whole-recipe checks
        return f"recipe error: {msg}"
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"recipe error: {loc}: {msg}{shown}"


def _fields_at(root: type[BaseModel], parent: list[str]) -> list[str]:
    model = root
    for name in parent:
        field = model.model_fields.get(name)
        ann = getattr(field, "annotation", None)
        sub = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def recipe_to_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def reference_markdown() -> str:
    """Every recipe field with its type, default and description (docs/recipe.md is generated from this)."""
    lines = [
        "# Recipe reference",
        "",
        "Generated by `nnrecipe fields`; every field, its default and what it means.",
        "The value of `task:` chooses which set of sections a recipe has.",
        "",
    ]
    table = ["| field | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        for name, f in model.model_fields.items():
            sub = next(
                (
                    a
                    for a in (f.annotation, *getattr(f.annotation, "__args__", ()))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
            if sub is not None and name != "normalize":
                rows.append((name, sub))
                continue
            default = f.default if f.default_factory is None else f.default_factory()
            lines.append(f"| `{prefix}{name}` | {_type_name(f.annotation)} | `{default}` | {f.description or ''} |")
        for name, sub in rows:
            lines.extend(["", f"### `{prefix}{name}`: {sub.__doc__.strip().splitlines()[0]}", "", *table])
            walk(sub, f"{prefix}{name}.")

    for task, cls in recipe_classes().items():
        lines.extend([f"## `task: {task}`", "", cls.__doc__.strip().splitlines()[0], "", *table])
        walk(cls, "")
        lines.append("")
    return "\n".join(lines)


def _type_name(a: Any) -> str:
    origin, args = get_origin(a), get_args(a)
    if origin is Literal:
        return " / ".join(str(x) for x in args)
    if origin in (Union, types.UnionType):
        named = [_type_name(x) for x in args if x is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return "[" + ", ".join(_type_name(x) for x in args) + "]"
    return {"Path": "path"}.get(getattr(a, "__name__", ""), getattr(a, "__name__", str(a)))
