"""The language-modelling recipe: a text stream, its tokeniser and block size, the sequence model, and how
the report's samples are drawn. Hyper-parameters default to nanoGPT's CPU configuration of char-level GPT."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from nnrecipe.engine.config import Section, Seed
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
        "auto",
        description="auto (char for a model from scratch, the model's own for a pretrained one), char (the characters of the training and validation text), bytes (UTF-8, 256 ids), bpe (byte-level BPE trained on the training text), or a local tokenizer.json / folder.",
    )
    vocab_size: int = Field(1024, gt=256, description="bpe: the vocabulary size to train.")
    block_size: int = Field(64, gt=1, description="Tokens of context per training example (GPT: the longest context).")
    batches_per_epoch: int = Field(
        250, gt=0, description="An epoch is this many batches of random blocks (a stream has no natural epoch)."
    )
    eval_batches: int = Field(50, gt=0, description="Validation batches at most (consecutive blocks from the start).")


SCRATCH = ("rnn", "lstm", "gru", "gpt")


class LMModel(Section):
    """A sequence model trained from scratch, or a pretrained Hugging Face causal LM fine-tuned."""

    name: str = Field(
        "gpt",
        description="From scratch: rnn, lstm, gru (torch.nn) or gpt (a decoder-only Transformer); or a local Hugging "
        "Face causal-LM folder (AutoModelForCausalLM), fine-tuned.",
    )
    finetune: Literal["full", "lora"] = Field("full", description="Pretrained models: full fine-tuning or LoRA (peft).")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: list[str] = Field(
        [], description="Modules LoRA adapts; empty = peft's defaults for the architecture (GPT-2: c_attn)."
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

    @property
    def pretrained(self) -> bool:
        return self.name not in SCRATCH

    def lora(self) -> dict:
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout, "targets": self.lora_targets}


class Sampling(Section):
    """How the report's (and predict's) samples are drawn."""

    prompts: list[str] = Field(["\n"], description="Fixed prompts the report continues after training.")
    max_new_tokens: int = Field(200, gt=0, description="Tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0, description="Softmax temperature; 0 = always the most likely token.")
    top_k: int | None = Field(40, gt=0, description="Sample among the k most likely tokens; null = all.")
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling: the smallest set with this much probability; null = off."
    )
    seed: Seed = Field(0, description="Seed of the sampling.")


class Masking(Section):
    """objective mlm: which tokens are masked (transformers' DataCollatorForLanguageModeling)."""

    probability: float = Field(0.15, gt=0, lt=1, description="Share of the tokens chosen for prediction.")
    mask_replace: float = Field(0.8, ge=0, le=1, description="Of those: share replaced by [MASK].")
    random_replace: float = Field(
        0.1, ge=0, le=1, description="Of those: share replaced by a random token (the rest stay)."
    )
    whole_word: bool = Field(False, description="Mask every piece of a chosen word (then all of them become [MASK]).")


class LMRecipe(TrainedRecipe):
    """Language modelling: a char-rnn or a small GPT trained from scratch on a text stream; loss, perplexity,
    bits per character, and samples."""

    DEFAULTS = {
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.99)},
        "schedule": {"name": "cosine", "warmup_epochs": 0.1, "min_lr_ratio": 0.1},
        "train": {"epochs": 8, "batch_size": 12, "eval_batch_size": 64, "clip_grad_norm": 1.0, "monitor": "val_loss"},
    }
    task: Literal["language_modeling"] = Field("language_modeling", description="The task family.")
    objective: Literal["clm", "mlm"] = Field(
        "clm",
        description="clm: predict the next token (from scratch or a causal LM); mlm: masked-LM pretraining of an "
        "encoder on the domain's text (it leaves runs/<run>/model for text and NER recipes).",
    )
    data: LMData = Field(default_factory=LMData)
    model: LMModel = Field(default_factory=LMModel)
    sample: Sampling = Field(default_factory=Sampling)
    masking: Masking = Field(default_factory=Masking)
