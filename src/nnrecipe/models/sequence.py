"""Sequence models trained from scratch on token streams: char-rnn style RNN/LSTM/GRU and a small GPT
(nanoGPT's decoder: pre-LayerNorm blocks, causal scaled_dot_product_attention, learned positions, weight
tying, GPT-2 initialisation), plus sampling with a KV cache (GPT) or the carried hidden state (RNNs).

Every model maps token ids (B x T) and an optional state to (logits B x T x V, new state), so training
ignores the state and generation feeds it back: N new tokens cost N incremental steps, not N full passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SEQUENCE_MODELS = ("rnn", "lstm", "gru", "gpt")


@dataclass
class SequenceConfig:
    """The architecture, stored in the run's spec so inference rebuilds it exactly."""

    kind: str  # rnn | lstm | gru | gpt
    vocab_size: int
    block_size: int  # GPT: the longest context (learned positions); RNNs: the training window
    n_layer: int = 2
    n_embd: int = 128  # embedding width (GPT: the model width)
    hidden: int = 256  # RNN hidden size
    n_head: int = 4
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True


class RecurrentLM(nn.Module):
    """Embedding -> torch.nn RNN/LSTM/GRU -> linear head; the head shares the embedding's weights when the
    widths allow (tie_weights and n_embd == hidden)."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.kind]
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = rnn(
            cfg.n_embd, cfg.hidden, cfg.n_layer, batch_first=True, dropout=cfg.dropout if cfg.n_layer > 1 else 0.0
        )
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)
        if cfg.tie_weights and cfg.n_embd == cfg.hidden:
            self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(self.drop(self.embed(idx)), state)
        return self.head(self.drop(out)), state


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True  # scaled at initialisation (GPT-2)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if cache is not None:  # generation: this step's keys/values follow the cached ones
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # Training and a prompt (no cache yet) are causal; a new token after a cache attends to everything.
        # (A plain bool, never one computed from T: the exported graph keeps batch and time free.)
        causal = cache is None or cache[0].shape[2] == 0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.out = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.out.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache=None):
        a, cache = self.attn(self.ln1(x), cache)
        x = x + self.drop(a)
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x))))), cache


class GPT(nn.Module):
    """State for generation: (per-layer (keys, values), the position of the next token)."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf), as in GPT-2
        self.apply(self._init)
        for m in self.modules():  # residual projections: std 0.02 / sqrt(2 * layers), GPT-2's scaling
            if getattr(m, "residual", False):
                nn.init.normal_(m.weight, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        caches, start = state if state is not None else ([None] * len(self.blocks), 0)
        T = idx.shape[1]
        if start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the block size {self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        new = []
        for block, cache in zip(self.blocks, caches):
            x, c = block(x, cache if state is not None else None)
            new.append(c)
        return self.head(self.ln_f(x)), (new, start + T)


def build_sequence_model(cfg: SequenceConfig) -> nn.Module:
    if cfg.kind not in SEQUENCE_MODELS:
        raise ValueError(f"unknown sequence model {cfg.kind!r}; allowed: {', '.join(SEQUENCE_MODELS)}")
    return GPT(cfg) if cfg.kind == "gpt" else RecurrentLM(cfg)


def no_decay_parameters(model: nn.Module) -> set[str]:
    """Names of the embeddings' weights: like biases and norms, not weight-decayed (nanoGPT, GPT-2)."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator
) -> torch.Tensor:
    """One token id per row from the last position's logits (temperature 0: the most likely one)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    stop: Callable[[int], bool] | None = None,
) -> torch.Tensor:
    """Continue `idx` (1 x T) by up to `max_new_tokens`. With the cache each new token is one incremental
    step; a GPT whose context fills its block re-reads its last half block once and carries on. Without
    it, every step re-reads the whole (last block_size tokens of the) context, as nanoGPT's sample.py does."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=idx.device).manual_seed(seed)
    block = getattr(model, "block_size", None)
    out = idx
    state, pending = None, idx if block is None else idx[:, -block:]
    for _ in range(max_new_tokens):
        if not use_cache:
            context = out if block is None else out[:, -block:]
            logits, _ = model(context)
        else:
            if block is not None and state is not None and state[1] + pending.shape[1] > block:
                state, pending = None, out[:, -(block // 2) :]  # the cache is full: re-read half a block
            logits, state = model(pending, state)
        token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        out = torch.cat([out, token], dim=1)
        pending = token
        if stop is not None and stop(int(token)):
            break
    model.train(was_training)
    return out
