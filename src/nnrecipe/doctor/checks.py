"""The task-independent checks (3-9). Each returns a Check with a verdict, the measured figure and advice.

Checks 4, 8 and 9 train with a known-safe optimiser (Adam, lr 1e-3) so that they judge the data and the
model, not the learning rate; checks 5 and 7 use the recipe's own optimiser, because judging the
learning rate is their job. That way one bug shows up in the check that names it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnrecipe.doctor.subject import Subject
from nnrecipe.engine.optim import fused_ok

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass
class Check:
    number: int
    name: str
    verdict: str
    figure: str
    advice: str = ""
    plots: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0  # filled in by run_doctor


def split_overlap(
    name: str, exact: float, near: float, near_limit: float, kind: str, near_what: str, exact_limit: float = 0.01
) -> tuple[str, str] | None:
    """The shared rule for val/test examples that also appear in train: over `exact_limit` (1%) exact copies
    fail (the split's scores measure memory), any exact copy or many near copies warn."""
    if exact > exact_limit:
        return FAIL, (
            f"{exact:.0%} of {name} are exact copies of training {kind}: {name} scores measure memory, "
            "not generalisation; deduplicate before splitting"
        )
    if exact > 0 or near > near_limit:
        return WARN, f"{name} shares {kind} with train ({exact:.1%} exact, {near:.1%} {near_what})"
    return None


def data_check_result(figure: str, verdicts: list[str], notes: list[str], details: list[str] = ()) -> Check:
    """Check 1 from what a family's data inspection found: the worst verdict, the notes as its advice."""
    verdict = FAIL if FAIL in verdicts else WARN if WARN in verdicts else PASS
    advice = "; ".join(notes).capitalize() + ("." if notes else "")
    return Check(1, "Become one with the data", verdict, figure, advice, details=list(details))


def exact_key(text: str) -> bytes:
    """A short digest of a text, for finding exact copies across splits."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def near_key(text: str) -> bytes:
    """Lower case, punctuation and spacing removed: catches copies that differ only in formatting."""
    return exact_key(" ".join(re.sub(r"[^\w\s]", " ", text.lower()).split()))


def _safe_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """Plain Adam, fused where torch has the kernels: on CPU torch's default is its per-tensor loop, which
    took 0.15 s of each 0.3 s MiniLM step (check 4 on the toy text set: 14.8 s, fused 8.4 s)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused_ok(model))


def _train(model: nn.Module, optimizer, batches, loss_fn, steps: int) -> list[float]:
    model.train()
    losses = []
    for i in range(steps):
        loss = loss_fn(model, batches[i % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def loss_at_init(s: Subject) -> Check:
    """3. The untrained model's loss should match the entropy of the class prior (-ln(1/C) if balanced)."""
    model = s.make_model().eval()
    with torch.no_grad():
        loss = sum(s.loss(model, b).item() for b in s.val_batches[:4]) / len(s.val_batches[:4])
    p = s.class_prior[s.class_prior > 0]
    expected = float(-(p * p.log()).sum())
    figure = f"loss at init {loss:.3f}; expected {expected:.3f} (class-prior entropy; -ln(1/C) = {math.log(len(s.class_prior)):.3f})"
    if abs(loss - expected) <= max(0.25 * expected, 0.1):
        return Check(3, "Loss at init", PASS, figure)
    return Check(
        3,
        "Loss at init",
        WARN,
        figure,
        "The initial predictions are far from 'know nothing'. Initialise the final layer's bias to the log "
        "class prior and scale its weights down, so the first steps are not spent undoing the initialisation.",
    )


def input_independent_baseline(s: Subject, steps: int = 60) -> Check:
    """4. Trained on real inputs, the model must beat the same model trained on zeroed inputs."""
    batches = s.train_batches(steps)
    real_model = s.make_model()
    _train(real_model, _safe_optimizer(real_model, s.safe_lr), batches, s.loss, steps)
    zero_model = s.make_model()
    _train(zero_model, _safe_optimizer(zero_model, s.safe_lr), [s.zero_inputs(b) for b in batches], s.loss, steps)
    real = s.accuracy(real_model, s.val_batches)
    zero = s.accuracy(zero_model, [s.zero_inputs(b) for b in s.val_batches])
    figure = f"val accuracy after {steps} steps: real inputs {real:.3f}, zeroed inputs {zero:.3f}"
    if real >= zero + 0.05:
        return Check(4, "Input-independent baseline", PASS, figure)
    return Check(
        4,
        "Input-independent baseline",
        WARN,
        figure,
        "The inputs carry no usable signal about the labels: the model does no better than one that never sees "
        "them. Look for labels shuffled or misaligned with their inputs, or a data pipeline that destroys the input.",
    )


def overfit_one_batch(s: Subject, steps: int = 150, size: int = 32) -> Check:
    """5. With the recipe's optimiser, the loss on one small batch must go to (near) zero."""
    batch = s.train_batches(1)[0]
    x = s.inputs(batch)
    batch = s.with_inputs(batch, x[:size])
    model = s.make_model()
    losses = _train(model, s.make_optimizer(model, s.recipe_lr), [batch], s.loss, steps)
    first, last = losses[0], min(losses[-10:]) if all(map(math.isfinite, losses[-10:])) else float("nan")
    figure = (
        f"loss on one batch of {len(s.inputs(batch))}: {first:.3f} -> {last:.4f} in {steps} steps at lr {s.recipe_lr:g}"
    )
    if math.isfinite(last) and last < 0.05 * first:
        return Check(5, "Overfit one batch", PASS, figure)
    causes = (
        "Likely causes: the learning rate (too high: the loss explodes or stalls; too low: it crawls), "
        "layers that do not train (frozen, detached), labels that do not match their inputs within the batch, "
        "augmentation or regularisation so strong that nothing can be memorised."
    )
    verdict = WARN if math.isfinite(last) and last < 0.5 * first else FAIL
    return Check(5, "Overfit one batch", verdict, figure, "The model cannot memorise a single batch. " + causes)


def batch_independence(s: Subject, i: int = 0) -> Check:
    """6. In eval mode, the gradient of sample i's output w.r.t. sample j's input must be zero for j != i."""
    model = s.make_model().eval()
    batch = s.val_batches[0]
    if s.leaf_inputs is not None:  # token ids are not differentiable: the task differentiates its embeddings
        x, forward = s.leaf_inputs(model, s.with_inputs(batch, s.inputs(batch)[:8]))
        out = forward(x)
    else:
        x = s.inputs(batch)[:8].clone().requires_grad_(True)
        out = s.logits(model, s.with_inputs(batch, x))
    out[i].sum().backward()
    # No gradient at all means no path from inputs to outputs (check 8 reports that); nothing can leak.
    leak = 0.0 if x.grad is None else float(x.grad[torch.arange(len(x)) != i].abs().max())
    figure = f"max |d output[{i}] / d input[j]| over j != {i}: {leak:.3g}"
    if leak == 0.0:
        return Check(6, "Batch independence", PASS, figure)
    return Check(
        6,
        "Batch independence",
        FAIL,
        figure,
        "The model mixes information across the batch: one sample's prediction depends on the other samples. "
        "Usually a wrong view/reshape (batch and feature axes swapped) or a statistic taken over the batch axis.",
    )


def lr_range_test(s: Subject, out_dir: Path, steps: int = 100, low: float = 1e-6, high: float = 10.0) -> Check:
    """7. Exponential LR sweep with the recipe's optimiser: loss vs LR, a suggested LR, and a warning when
    the recipe's LR is far from it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = s.make_model()
    optimizer = s.make_optimizer(model, low)
    gamma = (high / low) ** (1 / (steps - 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    batches = s.train_batches(steps)
    model.train()
    lrs, smooth, avg = [], [], 0.0
    for i in range(steps):
        lr = optimizer.param_groups[0]["lr"]
        loss = s.loss(model, batches[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = 0.9 * avg + 0.1 * value
        lrs.append(lr)
        smooth.append(avg / (1 - 0.9 ** (i + 1)))
        if smooth[-1] > 4 * min(smooth):
            break
    best = min(range(len(smooth)), key=smooth.__getitem__)
    lr_min = lrs[best]
    suggested = lr_min / 10  # an order of magnitude below the minimum: still descending fast, not yet unstable
    plot = out_dir / "lr_range.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, smooth)
    ax.axvline(suggested, color="green", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.axvline(s.recipe_lr, color="red", linestyle=":", label=f"recipe {s.recipe_lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    figure = f"loss lowest at lr {lr_min:.3g}; suggested lr {suggested:.3g}; recipe lr {s.recipe_lr:g}"
    # Too high costs the run; too low only costs time (and fine-tuning pretrained models sits far below
    # the sweep's minimum on purpose), so the low side is flagged only two orders of magnitude down.
    if suggested / 100 <= s.recipe_lr <= lr_min * 3:
        return Check(7, "LR range test", PASS, figure, plots=[plot.name])
    side = (
        "above the range where the loss still falls" if s.recipe_lr > lr_min * 3 else "far below the suggestion (slow)"
    )
    return Check(
        7,
        "LR range test",
        WARN,
        figure,
        f"The recipe's learning rate is {side}; try optim.lr near {suggested:.2g} "
        "(for a one-cycle schedule, its peak may sit closer to the loss minimum).",
        plots=[plot.name],
    )


def gradient_health(s: Subject, steps: int = 10) -> Check:
    """8. After a few steps: per-layer gradient norms, dead ReLUs, parameters that receive no gradient."""
    model = s.make_model()
    batches = s.train_batches(steps)
    _train(model, _safe_optimizer(model, s.safe_lr), batches, s.loss, steps - 1)
    dead: dict[str, float] = {}

    def hook(name):
        def record(module, inputs, output):
            # A unit (a channel, for feature maps) is dead when it is zero for every example and position.
            flat = output.detach().transpose(0, 1).reshape(output.shape[1], -1)
            dead[name] = float((flat.abs().amax(dim=1) == 0).float().mean())

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    model.train()
    loss = s.loss(model, batches[-1])
    model.zero_grad(set_to_none=True)
    loss.backward()
    for h in handles:
        h.remove()
    norms, silent, frozen = {}, [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
        elif p.grad is None or not bool(p.grad.abs().sum() > 0):
            silent.append(name)
        else:
            norms[name] = float(p.grad.norm())
    details = ["| parameter | gradient norm |", "|---|---:|"] + [f"| {n} | {v:.3g} |" for n, v in norms.items()]
    details += ["", "| ReLU | dead units |", "|---|---:|"] + [f"| {n} | {v:.1%} |" for n, v in dead.items()]
    worst_dead = max(dead.values(), default=0.0)
    figure = (
        f"{len(silent)} trainable parameter tensors without gradient; gradient norms "
        f"{min(norms.values(), default=0):.2g}..{max(norms.values(), default=0):.2g}; most dead ReLU layer {worst_dead:.0%}"
        + (f"; {len(frozen)} frozen by the recipe" if frozen else "")
    )
    if silent:
        return Check(
            8,
            "Gradient and activation health",
            FAIL,
            figure,
            f"These parameters should train but receive no gradient: {', '.join(silent)}. Something between "
            "them and the loss is detached (.detach(), .data, torch.no_grad, a non-differentiable op) or unused.",
            details=details,
        )
    problems = []
    if norms and max(norms.values()) > 1e3:
        problems.append("exploding gradients (norm > 1e3): lower the LR, clip gradients, check the loss scale")
    # Weight matrices only: some biases legitimately get ~0 gradient (an attention key bias shifts every
    # score of a query equally, which softmax ignores), and embedding tables only on the rows a batch uses.
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    shapes = {n: p.ndim for n, p in model.named_parameters()}
    dense = [v for n, v in norms.items() if shapes[n] >= 2 and n not in embeddings]
    if dense and min(dense) < 1e-7 * max(dense):
        problems.append(
            "vanishing gradients in some layers (7 orders of magnitude below the largest): check the initialisation and normalisation"
        )
    # Up to about half a layer inactive on a whole batch is common at init (inputs to it are all >= 0 and
    # alike); most of a layer silent means it carries almost nothing forward.
    if worst_dead > 0.8:
        problems.append(
            "over 80% of the units of a ReLU layer are dead for the whole batch: check the initialisation, lower the LR or use a leaky activation"
        )
    if problems:
        return Check(8, "Gradient and activation health", WARN, figure, "; ".join(problems) + ".", details=details)
    return Check(8, "Gradient and activation health", PASS, figure, details=details)


def determinism(s: Subject, steps: int = 8, seed: int = 1234) -> Check:
    """9. Two short runs with the same seed must give identical losses."""
    batches = s.train_batches(steps)
    runs = []
    for _ in range(2):
        model = s.make_model()
        torch.manual_seed(seed)  # dropout draws
        runs.append(_train(model, _safe_optimizer(model, s.safe_lr), batches, s.loss, steps))
    same = runs[0] == runs[1]
    diff = max(abs(a - b) for a, b in zip(*runs))
    figure = f"{steps} steps twice: losses {'identical' if same else f'differ by up to {diff:.3g}'}"
    if same:
        return Check(9, "Determinism", PASS, figure)
    return Check(
        9,
        "Determinism",
        FAIL,
        figure,
        "Same seed, different losses: some randomness is not seeded (data order, augmentation, dropout, a "
        "non-deterministic kernel). Bugs cannot be bisected and results cannot be reproduced until this passes.",
    )
