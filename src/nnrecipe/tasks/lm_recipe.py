"""The language-modelling recipe: a text stream, its tokeniser and block size, the sequence model, and how
the report's samples are drawn. Hyper-parameters default to nanoGPT's CPU configuration of char-level GPT."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from nnrecipe.engine.config import Section
from nnrecipe.tasks.sections import TrainedRecipe


class LMData(Section):
    """One token stream: validation is the last val_fraction of it (nanoGPT's convention) or its own file."""

    train: Path = Field(
        Path("data/tinyshakespeare/train.txt"), description="A text file, a folder of .txt files, or a JSONL file."
    )
    val: Path | None = Field(None, description="Validation text; null = the last val_fraction of the training text.")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the stream's end held out when data.val is null."
    )
    text_field: str = Field("text", description="JSONL: the field holding the text.")
    tokenizer: str = Field(
        "char",
        description="char (the characters of the training and validation text), bytes (UTF-8, 256 ids), bpe (byte-level BPE trained on the training text), or a local tokenizer.json / folder.",
    )
    vocab_size: int = Field(1024, gt=256, description="bpe: the vocabulary size to train.")
    block_size: int = Field(64, gt=1, description="Tokens of context per training example (GPT: the longest context).")
    batches_per_epoch: int = Field(
        250, gt=0, description="An epoch is this many batches of random blocks (a stream has no natural epoch)."
    )
    eval_batches: int = Field(50, gt=0, description="Validation batches at most (consecutive blocks from the start).")


class LMModel(Section):
    """A sequence model trained from scratch."""

    name: Literal["rnn", "lstm", "gru", "gpt"] = Field(
        "gpt", description="rnn, lstm, gru (torch.nn) or gpt (a decoder-only Transformer)."
    )
    n_layer: int = Field(4, gt=0, description="Layers (GPT blocks, or stacked RNN layers).")
    n_head: int = Field(4, gt=0, description="gpt: attention heads (n_embd must divide by it).")
    n_embd: int = Field(128, gt=0, description="Embedding width (gpt: the model width).")
    hidden: int = Field(256, gt=0, description="rnn/lstm/gru: hidden size.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on embeddings, residuals and between RNN layers.")
    bias: bool = Field(True, description="gpt: biases in linear layers and LayerNorms.")
    tie_weights: bool = Field(
        True, description="Share the embedding and output matrices (RNNs: when n_embd == hidden)."
    )


class Sampling(Section):
    """How the report's (and predict's) samples are drawn."""

    prompts: list[str] = Field(["\n"], description="Fixed prompts the report continues after training.")
    max_new_tokens: int = Field(200, gt=0, description="Tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0, description="Softmax temperature; 0 = always the most likely token.")
    top_k: int | None = Field(40, gt=0, description="Sample among the k most likely tokens; null = all.")
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling: the smallest set with this much probability; null = off."
    )
    seed: int = Field(0, description="Seed of the sampling.")


class LMRecipe(TrainedRecipe):
    """Language modelling: a char-rnn or a small GPT trained from scratch on a text stream; loss, perplexity,
    bits per character, and samples."""

    DEFAULTS = {
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.99)},
        "schedule": {"name": "cosine", "warmup_epochs": 0.1, "min_lr_ratio": 0.1},
        "train": {"epochs": 8, "batch_size": 12, "eval_batch_size": 64, "clip_grad_norm": 1.0, "monitor": "val_loss"},
    }
    task: Literal["language_modeling"] = Field("language_modeling", description="The task family.")
    data: LMData = Field(default_factory=LMData)
    model: LMModel = Field(default_factory=LMModel)
    sample: Sampling = Field(default_factory=Sampling)
