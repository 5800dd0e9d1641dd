"""The doctor for language models: the data checks (1, 2) and the Subject the generic checks drive, where a
block of tokens is an example and the next-token distribution its prediction. The loss at initialisation
must be close to ln(vocabulary size): the class prior is uniform over the vocabulary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from nnrecipe.data.lm import BlockLoader, encode_stream, fit_tokenizer
from nnrecipe.doctor.checks import PASS, WARN, Check
from nnrecipe.doctor.subject import Subject
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.models.sequence import build_sequence_model, no_decay_parameters
from nnrecipe.tasks.family import DoctorPlan
from nnrecipe.tasks.lm_recipe import LMRecipe


def plan(recipe: LMRecipe, splits, config) -> DoctorPlan:
    """`splits`: the training and validation texts; `config(vocab_size)`: the recipe's SequenceConfig."""
    d, t = recipe.data, recipe.train
    tokenizer = fit_tokenizer(d.tokenizer, splits.train, d.vocab_size, also=splits.val)
    train = encode_stream(tokenizer, splits.train, where="data.train")
    val = encode_stream(tokenizer, splits.val, where="validation text")
    cfg = config(tokenizer.vocab_size)

    def make_model():
        seed_everything(t.seed)
        return build_sequence_model(cfg)

    loader = BlockLoader(train, d.block_size, t.batch_size, batches=10_000, shuffle=True, seed=t.seed)
    val_batches = list(BlockLoader(val, d.block_size, t.eval_batch_size, batches=4).batches())

    def accuracy(model, batches) -> float:
        model.eval()
        with torch.no_grad():
            right = sum(int((model(x)[0].argmax(-1) == y).sum()) for x, y in batches)
        return right / sum(y.numel() for _, y in batches)

    subject = Subject(
        make_model=make_model,
        make_optimizer=lambda m, lr: build_optimizer(
            m, recipe.optim.model_copy(update={"lr": lr}), no_decay=no_decay_parameters(m)
        ),
        loss=lambda m, b: F.cross_entropy(m(b[0])[0].flatten(0, 1), b[1].flatten()),
        logits=lambda m, b: m(b[0])[0],
        train_batches=lambda n: [b for _, b in zip(range(n), loader.batches(0))],
        val_batches=val_batches,
        zero_inputs=lambda b: (torch.zeros_like(b[0]), b[1]),
        inputs=lambda b: b[0],
        with_inputs=lambda b, x: (x, b[1][: len(x)]),
        accuracy=accuracy,
        class_prior=torch.full((tokenizer.vocab_size,), 1.0 / tokenizer.vocab_size),
        recipe_lr=recipe.optim.lr,
        leaf_inputs=embedding_leaf,
    )

    def data_check(out: Path) -> Check:
        counts = Counter(train.tolist())
        top = ", ".join(f"{tokenizer.decode([i])!r} {n / len(train):.1%}" for i, n in counts.most_common(5))
        unused = tokenizer.vocab_size - len(counts)
        figure = (
            f"{len(splits.train):,} train / {len(splits.val):,} val characters; {tokenizer.kind} tokenizer, "
            f"vocabulary {tokenizer.vocab_size:,} ({unused} ids never seen in training); {len(train):,} train tokens "
            f"= {len(train) / d.block_size:,.0f} blocks of {d.block_size}; most frequent: {top}"
        )
        if len(train) < 20 * d.block_size:
            return Check(
                1, "Become one with the data", WARN, figure, "Fewer than 20 blocks of text: expect memorisation."
            )
        return Check(1, "Become one with the data", PASS, figure)

    def batch_check(out: Path) -> Check:
        x, y = subject.train_batches(1)[0]
        lines = [repr(tokenizer.decode(row.tolist())) for row in x[:8]]
        (out / "batch.txt").write_text("\n".join(lines) + "\n")
        shifted = bool(torch.equal(x[:, 1:], y[:, :-1]))
        figure = (
            f"batch {tuple(x.shape)}; targets are the inputs shifted by one: {shifted}; first block: {lines[0][:80]}"
        )
        verdict = PASS if shifted else WARN
        return Check(
            2, "Visualise just before the net", verdict, figure, "Read batch.txt: each line a block of real text."
        )

    return DoctorPlan(subject, [data_check, batch_check])


def embedding_leaf(model, batch):
    """Token ids carry no gradient: differentiate the token embeddings' output instead (check 6)."""
    x = batch[0]
    embedding = model.wte if hasattr(model, "wte") else model.embed
    leaf = embedding(x).detach().requires_grad_(True)

    def forward(e: torch.Tensor) -> torch.Tensor:
        handle = embedding.register_forward_hook(lambda module, args, output: e)
        try:
            return model(x)[0]
        finally:
            handle.remove()

    return leaf, forward
