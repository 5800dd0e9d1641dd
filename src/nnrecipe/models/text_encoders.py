"""Text classifiers and taggers trained from scratch, the baselines beside a pretrained encoder: an
embedding, then LSTM/GRU layers (one direction or both) or a TextCNN (Kim 2014), then a head.

They take what a Hugging Face model takes (input_ids, attention_mask, labels) and return loss and logits,
so the text families' loaders, tasks, export and serving use them unchanged. Padding is on the right and
never reaches a real position: the forward direction reads it last, and the backward direction runs on each
sequence reversed within its own length (a gather, which exports to ONNX, unlike packed sequences). A
sequence head max-pools the last layer over the real positions; a token head classifies every position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

SCRATCH_MODELS = ("lstm", "bilstm", "gru", "bigru", "textcnn")


@dataclass
class EncoderConfig:
    """The architecture, stored in the run's spec so inference rebuilds it exactly."""

    kind: str  # one of SCRATCH_MODELS
    vocab_size: int
    pad_id: int
    n_labels: int
    head: str = "sequence"  # sequence | token
    embedding_dim: int = 128
    hidden_size: int = 256  # per direction (TextCNN: filters per kernel size)
    layers: int = 1
    dropout: float = 0.3
    kernel_sizes: tuple[int, ...] = (3, 5, 7)  # odd widths: "same" padding needs no copy of the input

    def spec(self) -> dict:
        return asdict(self) | {"kernel_sizes": list(self.kernel_sizes)}


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row of x (B x T x H) reversed over its first `lengths` positions; padding stays where it is."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx[:, :, None].expand_as(x))


class RecurrentEncoder(nn.Module):
    """Stacked LSTM/GRU layers; bidirectional ones concatenate both directions before the next layer."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cell = nn.LSTM if "lstm" in cfg.kind else nn.GRU
        self.bidirectional = cfg.kind.startswith("bi")
        width, h = cfg.embedding_dim, cfg.hidden_size
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for _ in range(cfg.layers):
            self.forward_layers.append(cell(width, h, batch_first=True))
            if self.bidirectional:
                self.backward_layers.append(cell(width, h, batch_first=True))
            width = h * (2 if self.bidirectional else 1)
        self.width = width
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for i, fwd in enumerate(self.forward_layers):
            if i:
                x = self.drop(x)
            out = fwd(x)[0]
            if self.bidirectional:
                back = reverse_within(self.backward_layers[i](reverse_within(x, lengths))[0], lengths)
                out = torch.cat([out, back], dim=-1)
            x = out
        return x


class ConvEncoder(nn.Module):
    """TextCNN: parallel 1-D convolutions of several widths ('same' padding), ReLU, their maps concatenated."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.embedding_dim, cfg.hidden_size, k, padding="same") for k in cfg.kernel_sizes
        )
        self.width = cfg.hidden_size * len(cfg.kernel_sizes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        return torch.cat([F.relu(conv(x)) for conv in self.convs], dim=1).transpose(1, 2)


class ScratchTextModel(nn.Module):
    """Embedding -> encoder -> (masked max-pool, for a sequence head) -> dropout -> linear."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=cfg.pad_id)
        self.encoder = ConvEncoder(cfg) if cfg.kind == "textcnn" else RecurrentEncoder(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(self.encoder.width, cfg.n_labels)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        width = x.shape[1]
        if width == 0:  # every text of the batch empty: one padding position to read (a token head returns none)
            x, attention_mask = x.new_zeros(x.shape[0], 1, x.shape[2]), attention_mask.new_zeros(x.shape[0], 1)
        # An empty text (no tokens: the word tokenizer adds no [CLS]) is read as its first, padding position;
        # max-pooling over no position at all gave the dtype's minimum, infinite logits and a NaN loss.
        first = torch.ones_like(attention_mask).cumsum(1) == 1
        real = attention_mask.bool() | (first & ~attention_mask.bool().any(1, keepdim=True))
        lengths = real.sum(1)
        h = self.encoder(self.drop(x), lengths)
        if self.cfg.head == "sequence":
            h = h.masked_fill(~real[:, :, None], torch.finfo(h.dtype).min).amax(1)
        else:
            h = h[:, :width]
        logits = self.classifier(self.drop(h))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)
