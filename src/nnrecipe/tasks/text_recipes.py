"""The recipes of the text families (classification, NER, zero/few-shot from embeddings): one data section
for labelled text files, one for token files, one pretrained-encoder section shared by the fine-tuned ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from nnrecipe.engine.config import ClassName, ClassNames, Section, Seed
from nnrecipe.models.text_encoders import SCRATCH_MODELS
from nnrecipe.tasks.sections import ContinualBase, FamilyRecipe, TrainedRecipe

TRANSFORMER_DEFAULTS = {
    "optim": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01},
    "schedule": {"name": "linear", "warmup_epochs": 0.1},
    "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 128, "clip_grad_norm": 1.0},
}

# From-scratch baselines (model.name: lstm, bilstm, gru, bigru, textcnn) learn every weight: a larger step,
# more epochs and larger batches than fine-tuning a pretrained encoder.
SCRATCH_DEFAULTS = {
    "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 0.1},
    "train": {"epochs": 5, "batch_size": 64, "eval_batch_size": 256, "clip_grad_norm": 1.0},
}


def scratch_model(raw: dict[str, Any]) -> bool:
    model = raw.get("model")
    return isinstance(model, dict) and model.get("name") in SCRATCH_MODELS


SPLIT_MODES = ("auto", "containment", "none")  # data.split_groups' modes; any other value names a column


class TextData(Section):
    """Text classification files: CSV/TSV (with a header) or JSONL, one example per row."""

    train: Path = Field(Path("data/sst2/train.tsv"), description="Training file.")
    val: Path | None = Field(None, description="Validation file; null = hold back val_fraction of train.")
    test: Path | None = Field(None, description="Test file; null = report on validation.")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description="auto follows the file extension.")
    text_column: str = Field("sentence", description="Column (or JSON key) holding the text.")
    text_pair_column: str | None = Field(None, description="Second text for sentence-pair tasks; null = single text.")
    label_column: str = Field("label", description="Column holding the label (a name or an id).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held back from train when data.val is null.")
    split_seed: Seed = Field(0, description="Seed of that split.")
    split_groups: str = Field(
        "auto",
        description="Held-out validation keeps texts that contain one another (SST-2's sub-phrases) on one side: "
        "containment always, auto when the training file has any, none = a plain row split; or the name of a "
        "column whose equal values stay on one side (a document or speaker id).",
    )
    group_column: str | None = Field(
        None,
        description="Column naming each example's group (fairness): evaluate then reports accuracy, F1, selection "
        "rate and support per group and the parity gaps; the doctor warns about groups too small to judge.",
    )

    def other_columns(self) -> tuple[str, ...]:
        """The columns read beside text and label: the group column, a split-groups column."""
        named = [self.group_column, None if self.split_groups in SPLIT_MODES else self.split_groups]
        return tuple(dict.fromkeys(c for c in named if c))

    limit: int | None = Field(None, gt=0, description="Use only the first N training rows.")
    classes: ClassNames | None = Field(
        None,
        min_length=1,
        description="Keep only the rows of these labels (a continual stage's); splits are cut from the whole file "
        "first, so a label's validation rows are the same in every recipe. null = all.",
    )
    max_length: int = Field(128, gt=1, description="Truncate to this many tokens.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (less padding, same randomness).")
    stream: Literal["auto"] | bool = Field(
        "auto",
        description="Leave the texts in their files: one pass keeps each row's place and label; a batch's rows "
        "are read and tokenised when drawn (the batches are the in-memory path's). auto: when a file held in "
        "memory would pass data.memory_cap_mb (about 25x its size on disk; the choice is printed). Streamed "
        "training data is split by rows (split_groups auto or a column; containment needs the texts in memory).",
    )
    memory_cap_mb: int = Field(
        2048, gt=0, description="stream auto: the estimated in-memory size above which a file is streamed."
    )


class TextModel(Section):
    """A pretrained Hugging Face encoder with a task head, fine-tuned fully or parameter-efficiently (peft),
    or a baseline trained from scratch (lstm, bilstm, gru, bigru, textcnn) on a tokenizer fitted to the data."""

    name: str = Field(
        "minilm",
        description="minilm (the packaged all-MiniLM-L6-v2), a local model folder, a hub id (online only), or "
        "from scratch: lstm, bilstm, gru, bigru, textcnn.",
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

    tokenizer: Literal["word", "bpe"] = Field(
        "word", description="From-scratch models: a word-level or BPE tokenizer trained on the training text."
    )
    vocab_size: int = Field(20000, gt=2, description="From-scratch models: the tokenizer's largest vocabulary.")
    lowercase: bool = Field(False, description="From-scratch models: lowercase text before tokenising.")
    embedding_dim: int = Field(128, gt=0, description="From-scratch models: token embedding width.")
    hidden_size: int = Field(
        256, gt=0, description="From-scratch models: hidden units per direction (TextCNN: filters per width)."
    )
    layers: int = Field(1, gt=0, description="From-scratch recurrent models: stacked layers.")
    dropout: float = Field(
        0.3, ge=0, lt=1, description="From-scratch models: dropout on embeddings, between layers, before the head."
    )

    def peft_options(self) -> dict:
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "targets": self.lora_targets,
            "prefix_tokens": self.prefix_tokens,
        }


class TextContinual(ContinualBase):
    """Continual learning for text classifiers: new data for the same labels, or new labels (head rows added)."""

    stages: list[list[ClassName]] | None = Field(
        None,
        min_length=2,
        description="Class-incremental stages, label lists, e.g. [['World','Sports'], ['Business','Sci/Tech']]: one "
        "ordinary run per stage, each continuing the last, and the accuracy matrix; null = one run.",
    )


class TextRecipe(TrainedRecipe):
    """Text classification by fine-tuning a pretrained transformer."""

    DEFAULTS = TRANSFORMER_DEFAULTS
    task: Literal["text_classification"] = Field("text_classification", description="The task family.")
    data: TextData = Field(default_factory=TextData)
    model: TextModel = Field(default_factory=TextModel)
    continual: TextContinual = Field(default_factory=TextContinual)

    @classmethod
    def defaults_for(cls, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return SCRATCH_DEFAULTS if scratch_model(raw) else cls.DEFAULTS


NER_DEFAULTS = TRANSFORMER_DEFAULTS | {"train": TRANSFORMER_DEFAULTS["train"] | {"monitor": "val_f1"}}
NER_SCRATCH_DEFAULTS = SCRATCH_DEFAULTS | {"train": SCRATCH_DEFAULTS["train"] | {"epochs": 10, "monitor": "val_f1"}}


class TokenData(Section):
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
    split_seed: Seed = Field(0, description="Seed of that split.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training sentences.")
    max_length: int = Field(128, gt=1, description="Truncate to this many sub-tokens; words beyond it are predicted O.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (less padding, same randomness).")
    stream: Literal["auto"] | bool = Field(
        "auto",
        description="Leave the words in their files: one pass keeps each sentence's place and its tags; a "
        "batch's sentences are read and tokenised when drawn (the batches are the in-memory path's). auto: when "
        "a file held in memory would pass data.memory_cap_mb (the estimate and the choice are printed).",
    )
    memory_cap_mb: int = Field(
        2048, gt=0, description="stream auto: the estimated in-memory size above which a file is streamed."
    )


class TokenRecipe(TrainedRecipe):
    """Token classification (NER) by fine-tuning a pretrained transformer."""

    DEFAULTS = NER_DEFAULTS
    task: Literal["token_classification"] = Field("token_classification", description="The task family.")
    data: TokenData = Field(default_factory=TokenData)
    model: TextModel = Field(default_factory=TextModel)
    continual: ContinualBase = Field(
        default_factory=ContinualBase, description="Continual learning: new sentences, new entity types (tags added)."
    )

    @classmethod
    def defaults_for(cls, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return NER_SCRATCH_DEFAULTS if scratch_model(raw) else cls.DEFAULTS


class EmbeddingModel(Section):
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
    seed: Seed = Field(0, description="Seed of the few-shot draw.")


class EmbeddingRecipe(FamilyRecipe):
    """Zero- or few-shot text classification from sentence embeddings (nearest class prototype by cosine)."""

    task: Literal["embedding_classification"] = Field("embedding_classification", description="The task family.")
    data: TextData = Field(default_factory=TextData)
    model: EmbeddingModel = Field(default_factory=EmbeddingModel)
