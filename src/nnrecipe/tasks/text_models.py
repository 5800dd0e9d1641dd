"""Which text model a recipe's `model` section names, built once here for the two text families and their
doctors: a pretrained Hugging Face encoder (models/hf.py) or a baseline from scratch (models/text_encoders.py)
with a tokenizer fitted to the training text and saved in the run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from nnrecipe.data.word_tokenizer import load_tokenizer, train_tokenizer
from nnrecipe.errors import UserError
from nnrecipe.models.hf import build
from nnrecipe.models.text_encoders import SCRATCH_MODELS, EncoderConfig, ScratchTextModel

TOKENIZER_DIR = "tokenizer"  # where a from-scratch run keeps its tokenizer


def from_scratch(name: str) -> bool:
    return name in SCRATCH_MODELS


def new_model(
    m, labels: list[str], head: str, texts: Iterable[str], tokenizer=None, **peft: Any
) -> tuple[nn.Module, Any, dict]:
    """(model, tokenizer, architecture) for a new run of the recipe's model section `m`; `texts` (the
    training text) fits a from-scratch model's tokenizer, unless one fitted before is given."""
    if not from_scratch(m.name):
        model, tokenizer = build(m.name, labels, m.finetune, m.peft_options() | peft, head=head)
        return model, tokenizer, {}
    if m.finetune != "full":
        raise UserError(
            f"model.finetune: {m.name} is trained from scratch, all of it (finetune: full); "
            f"{m.finetune} adapts a pretrained encoder"
        )
    tokenizer = tokenizer or train_tokenizer(texts, m.tokenizer, m.vocab_size, m.lowercase)
    cfg = EncoderConfig(
        kind=m.name,
        vocab_size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        n_labels=len(labels),
        head=head,
        embedding_dim=m.embedding_dim,
        hidden_size=m.hidden_size,
        layers=m.layers,
        dropout=m.dropout,
    )
    return ScratchTextModel(cfg), tokenizer, cfg.spec()


def safe_lr(m) -> float:
    """A learning rate the doctor trusts: pretrained transformers diverge at the CNN-safe 1e-3."""
    return 1e-3 if from_scratch(m.name) else 1e-4


def saved_model(spec: dict, run_dir: Path, head: str) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of a trained run, weights not loaded yet."""
    if from_scratch(spec["model"]):
        cfg = spec["architecture"]
        return ScratchTextModel(EncoderConfig(**cfg | {"kernel_sizes": tuple(cfg["kernel_sizes"])})), load_tokenizer(
            Path(run_dir) / TOKENIZER_DIR
        )
    return build(spec["model"], spec["labels"], spec["finetune"], spec["peft"], head=head)
