"""A local Hugging Face causal language model (`AutoModelForCausalLM`: GPT-2, Llama, Qwen...) behind the
interface of the from-scratch sequence models: ids (B x T) and a state in, (logits, state) out, the state
being the model's own KV cache and the position of the next token. Fine-tuned fully or with LoRA (peft)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnrecipe.errors import UserError
from nnrecipe.models.hf import quiet_transformers, resolve, with_peft

FINETUNE_MODES = ("full", "lora")


class CausalLM(nn.Module):
    """`block_size` is the model's longest context (its position table), which generation keeps within."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        self.block_size = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None and not torch.is_grad_enabled():  # a prompt: keep its cache for the next step
            out = self.model(input_ids=idx, use_cache=True)
            return out.logits, (out.past_key_values, idx.shape[1])
        if state is None:  # training: no cache
            return self.model(input_ids=idx, use_cache=False).logits, None
        cache, start = state
        out = self.model(input_ids=idx, past_key_values=cache, use_cache=True)
        return out.logits, (out.past_key_values, start + idx.shape[1])


def load_causal_lm(name: str, finetune: str = "full", lora: dict[str, Any] | None = None) -> CausalLM:
    """The pretrained model at `name` (a local folder, or a hub id in the cache), prepared for `finetune`."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = resolve(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.name: cannot load {name!r} as a causal language model: {str(e).splitlines()[0]}"
        ) from None
    if finetune == "lora":
        import peft
        from transformers.pytorch_utils import Conv1D

        lora = lora or {}
        config = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM,
            r=lora.get("r", 8),
            lora_alpha=lora.get("alpha", 16),
            lora_dropout=lora.get("dropout", 0.0),
            target_modules=lora.get("targets") or None,  # None: peft's defaults for the architecture
            # GPT-2's Conv1D stores its weight transposed: said so, not corrected by peft with a warning per layer
            fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        )
        try:
            model = with_peft(model, config)
        except ValueError as e:
            raise UserError(f"model.lora_targets: {str(e).splitlines()[0]}") from None
    elif finetune != "full":
        raise UserError(f"model.finetune: must be one of {', '.join(FINETUNE_MODES)} (got {finetune!r})")
    return CausalLM(model)
