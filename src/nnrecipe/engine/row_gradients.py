"""A large embedding table's gradient kept in one buffer that a step writes, measures and clears only at the
rows its batches looked up, for the duration of CPU training.

torch's embedding backward allocates a dense zero gradient the size of the table and adds the looked-up rows
into it; clipping then reads all of it for the norm. For MiniLM's 30,522 x 384 word embedding, of which a
batch of 32 sentences of 24 tokens looks up at most 768 rows, the zero-fill (47 MB) took 10 ms and the
norm's read of it 4 ms of a 170 ms training step on the CPU (bench/RESULTS.md). Here the table's lookup is
an autograd function whose backward adds its rows into a buffer that stays attached as the weight's
`.grad`; the rows it wrote are remembered, so the next step clears only them, and `compact` gives clipping
the rows that can be non-zero. The optimizer still sees the whole dense gradient (zeros elsewhere), so
AdamW's update is the one it always was: a row's sum is taken in the order torch's own CPU backward takes
it and accumulated batches are added as autograd adds them, so the gradient equals torch's bit for bit
(tested); the norm over the rows equals the norm over the table up to the order of its sum.

Anything else that changes the buffer in place (another path into a tied weight, clip_grad_norm_'s
multiply, zero_grad without set_to_none) moves the tensor's version counter: the buffer is then treated
as dense, cleared whole and measured whole, as before. The fused Adam kernel's grad_scale division leaves
zeros zero and the version as it was. Used only in one-process CPU training: DDP and FSDP wait for every
parameter's gradient through autograd hooks, which this weight no longer takes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MIN_WEIGHTS = 1_000_000  # smaller tables cost less to clear than the bookkeeping saves


class _LookUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, module: RowGradEmbedding) -> torch.Tensor:
        ctx.module = module
        ctx.save_for_backward(ids)
        return F.embedding(ids, weight, module.padding_idx)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ctx.module.add_rows(ids, grad_out)
        return None, None, None


class RowGradEmbedding(nn.Embedding):
    """An nn.Embedding whose weight gradient is written row by row into a kept buffer (the module's class while
    `row_gradients` holds it: the same object, so hooks, optimizer references and state-dict keys stay)."""

    buffer: torch.Tensor | None
    rows: list[torch.Tensor]
    version: int

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        return _LookUp.apply(ids, self.weight, self)

    def add_rows(self, ids: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Add a batch's row gradients into the weight's `.grad` (the kept buffer, cleared first when the
        optimizer let it go): summed per row first, in the order torch's CPU embedding backward sums them,
        then added, as autograd adds a second backward's gradient to the first; padding rows left out."""
        flat = ids.reshape(-1)
        rows = grad_out.reshape(flat.numel(), -1)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, rows = flat[keep], rows[keep]
        looked_up, where = torch.unique(flat, return_inverse=True)
        sums = rows.new_zeros(len(looked_up), rows.shape[1]).index_add_(0, where, rows)
        grad = self.weight.grad
        if grad is None:
            grad = self.weight.grad = self._cleared()
        tracked = self._tracked(grad)  # asked before the add moves the version
        grad.index_add_(0, looked_up, sums.to(grad.dtype))
        if tracked:
            self.rows.append(looked_up)
            self.version = grad._version

    def _tracked(self, grad: torch.Tensor) -> bool:
        """Whether `grad` is the buffer and nothing but add_rows changed it since it was cleared (once not,
        the version stays behind until the buffer is cleared whole)."""
        return grad is self.buffer and grad._version == self.version

    def _cleared(self) -> torch.Tensor:
        w, buf = self.weight, self.buffer
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
            self.buffer = torch.zeros_like(w, memory_format=torch.contiguous_format)
        elif not self._tracked(buf):  # changed by something else: dense
            buf.zero_()
        elif self.rows:
            buf.index_fill_(0, torch.cat(self.rows), 0.0)
        self.rows, self.version = [], self.buffer._version
        return self.buffer

    def nonzero_rows(self) -> torch.Tensor | None:
        """The rows of the buffer that may be non-zero, or None when something else changed it (dense now)."""
        if self.buffer is None or not self._tracked(self.buffer):
            return None
        if len(self.rows) == 1:
            return self.rows[0]
        return torch.cat(self.rows).unique() if self.rows else torch.zeros(0, dtype=torch.long)


def compact(grads: list[torch.Tensor], modules: list[RowGradEmbedding]) -> list[torch.Tensor]:
    """`grads` with each kept buffer replaced by its possibly non-zero rows: the same norm, read from far less."""
    kept = {id(m.buffer): m for m in modules if m.buffer is not None}
    out = []
    for g in grads:
        picked = kept[id(g)].nonzero_rows() if id(g) in kept else None
        out.append(g if picked is None else g.index_select(0, picked))
    return out


def _eligible(model: nn.Module) -> list[nn.Embedding]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return [
        m
        for m in model.modules()
        if type(m) is nn.Embedding
        and m.weight.numel() >= MIN_WEIGHTS
        and m.weight.device.type == "cpu"
        and m.max_norm is None  # renormalises the weight in its forward
        and not m.scale_grad_by_freq
        and not m.sparse
        and counts.get(id(m.weight), 0) == 1  # tied to an output layer: that gradient is dense anyway
    ]


@contextmanager
def row_gradients(model: nn.Module) -> Iterator[list[RowGradEmbedding]]:
    """Every large nn.Embedding in `model` made a RowGradEmbedding for the duration and an nn.Embedding again
    after (a gradient left attached stays as it is). Yields the modules, for `compact`."""
    modules = _eligible(model)
    for m in modules:
        m.__class__ = RowGradEmbedding
        m.buffer, m.rows, m.version = None, [], -1
    try:
        yield modules
    finally:
        for m in modules:
            m.__class__ = nn.Embedding
            del m.buffer, m.rows, m.version
