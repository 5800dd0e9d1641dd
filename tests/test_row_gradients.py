"""A large embedding's gradient written, measured and cleared at the rows a step looked up
(engine/row_gradients.py): the same gradients as torch's backward, bit for bit, and the same training."""

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.config import Optim, Train
from nnrecipe.engine.loop import Callback
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.row_gradients import RowGradEmbedding, compact, row_gradients
from test_engine import make_trainer

VOCAB, DIM = 4000, 256  # 1.02M weights: just above row_gradients' size floor


class Bag(nn.Module):
    """Mean of the non-padding token embeddings, then a linear layer."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.out = nn.Linear(DIM, 3)

    def forward(self, ids):
        mask = (ids != 0).unsqueeze(-1).float()
        return self.out((self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


def token_ids(n, seed):
    """Class c draws most tokens from 200 of its own third of the vocabulary, the rest from anywhere; padded
    tails."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    own = 1 + y[:, None] * (VOCAB // 3) + torch.randint(0, 200, (n, 12), generator=g)
    ids = torch.where(torch.rand(n, 12, generator=g) < 0.8, own, torch.randint(1, VOCAB, (n, 12), generator=g))
    ids[torch.arange(12).expand(n, 12) >= torch.randint(4, 13, (n, 1), generator=g)] = 0
    return ids, y


def backward(model, ids, y):
    F.cross_entropy(model(ids), y).backward()


def test_gradients_equal_torchs_bit_for_bit_and_a_step_clears_only_its_rows():
    ids, y = token_ids(64, 0)
    ids[:5, :6] = 7  # a row looked up many times in one batch
    ours, ref = Bag(), Bag()
    with row_gradients(ours) as modules:
        assert modules == [ours.embed] and type(ours.embed) is RowGradEmbedding
        for batches in ([slice(0, 32)], [slice(32, 48), slice(48, 64)]):  # one batch; two accumulated
            for b in batches:
                backward(ours, ids[b], y[b])
                backward(ref, ids[b], y[b])
            grad = ours.embed.weight.grad
            assert torch.equal(grad, ref.embed.weight.grad)  # padding row 0 included: left at zero
            grads = [p.grad for p in ours.parameters()]
            small = compact(grads, modules)
            seen = torch.cat([ids[b] for b in batches])
            assert small[0].shape[0] == len(torch.unique(seen[seen != 0]))  # the rows looked up, no more
            torch.testing.assert_close(torch.nn.utils.get_total_norm(small), torch.nn.utils.get_total_norm(grads))
            ours.zero_grad(set_to_none=True)
            ref.zero_grad(set_to_none=True)
    assert type(ours.embed) is nn.Embedding and not hasattr(ours.embed, "buffer")


def test_a_gradient_changed_by_anything_else_is_measured_and_cleared_whole():
    """Another path into the weight (here an in-place add, as autograd makes for a weight tied to an output
    layer) may write any row: the buffer is then dense until it is cleared whole."""
    ids, y = token_ids(32, 1)
    ours, ref = Bag(), Bag()
    with row_gradients(ours) as modules:
        backward(ours, ids, y)
        ours.embed.weight.grad.add_(1.0)
        full = torch.nn.utils.get_total_norm([ours.embed.weight.grad])
        assert torch.equal(torch.nn.utils.get_total_norm(compact([ours.embed.weight.grad], modules)), full)
        ours.zero_grad(set_to_none=True)
        backward(ours, ids, y)
        backward(ref, ids, y)
        assert torch.equal(ours.embed.weight.grad, ref.embed.weight.grad)  # no 1.0 left outside the rows


def test_a_change_between_two_accumulated_backward_passes_is_not_forgotten():
    """The buffer changed by something else, then a second backward pass added to it before any step: the
    change must still make the next clearing whole (the second pass once took the buffer as its own again)."""
    ids, y = token_ids(32, 5)
    ours, ref = Bag(), Bag()
    with row_gradients(ours) as modules:
        backward(ours, ids[:16], y[:16])
        ours.embed.weight.grad.add_(1.0)
        backward(ours, ids[16:], y[16:])
        assert modules[0].nonzero_rows() is None  # dense: measured whole
        ours.zero_grad(set_to_none=True)
        backward(ours, ids, y)
        backward(ref, ids, y)
        assert torch.equal(ours.embed.weight.grad, ref.embed.weight.grad)


def test_tied_frozen_and_small_tables_are_left_alone():
    tied = Bag()
    head = nn.Linear(DIM, VOCAB, bias=False)
    head.weight = tied.embed.weight
    tied.head = head
    frozen_then_not = Bag()
    small = nn.Embedding(100, 16)
    with row_gradients(tied) as a, row_gradients(small) as b, row_gradients(frozen_then_not) as c:
        assert a == [] and b == [] and c == [frozen_then_not.embed]
        frozen_then_not.embed.weight.requires_grad_(False)
        ids, y = token_ids(8, 2)
        backward(frozen_then_not, ids, y)
        assert frozen_then_not.embed.weight.grad is None


class _Kinds(Callback):
    def __init__(self):
        self.seen = []

    def on_train_mode(self, epoch, model):
        self.seen.append(type(model.embed).__name__)


def test_cpu_training_with_row_gradients_follows_a_hand_written_loop(tmp_path):
    """Norm clipping folded into fused AdamW, gradient accumulation over two batches: the engine's weights
    follow clip_grad_norm_ + step on torch's own embedding backward (to the rounding of the norm's sum)."""
    clip = 0.02
    data = (*token_ids(256, 3), *token_ids(128, 4))
    optim = Optim(name="adamw", lr=0.01, weight_decay=0.01, fused=True)
    train = Train(epochs=3, batch_size=16, grad_accum_steps=2, device="cpu", clip_grad_norm=clip, precision="fp32")
    kinds = _Kinds()
    trainer = make_trainer(tmp_path, Bag(), train=train, optim=optim, callbacks=[kinds], data=data)
    assert trainer.clip_in_step
    result = trainer.fit()
    assert kinds.seen == ["RowGradEmbedding"] * 3
    assert type(trainer.eval_model().embed) is nn.Embedding
    assert result.history[-1]["val_accuracy"] > 0.9

    model = Bag()
    opt = build_optimizer(model, optim)
    loader = TensorLoader(data[0], data[1], 16, shuffle=True, seed=0)
    clipped = 0
    for epoch in range(3):
        for i, (xb, yb) in enumerate(loader.batches(epoch)):
            (F.cross_entropy(model(xb), yb) / 2).backward()
            if i % 2 == 1:
                clipped += float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)) > clip
                opt.step()
                opt.zero_grad()
    assert clipped > 8  # clipping was active
    for a, b in zip(trainer.eval_model().parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
