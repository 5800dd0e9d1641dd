"""Domain-adaptive pretraining (`objective: mlm` in a language-modelling recipe): a pretrained encoder (the
packaged MiniLM, or any local `AutoModelForMaskedLM` folder) goes on with masked-language-model training on
the domain's raw text, and the run leaves a model folder (`runs/<run>/model`) that text and NER recipes
start from (`model.name: runs/<run>/model`).

The text is one token stream (the encoder's own tokenizer, no special tokens) cut into blocks of
`data.block_size`, [CLS] ... [SEP] added; transformers' DataCollatorForLanguageModeling masks them (15% of
the tokens, 80% of those become [MASK], 10% a random token, 10% stay; whole-word masking as an option), with
its generator seeded from (seed, epoch, batch) so a resumed run masks exactly as an uninterrupted one. The
validation blocks are masked the same way every epoch, so their loss is comparable from epoch to epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrecipe.data.lm import BlockLoader
from nnrecipe.engine.checkpoint import load_weights
from nnrecipe.engine.loop import console
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import derived_seed
from nnrecipe.errors import UserError
from nnrecipe.models.hf import parameter_counts, quiet_transformers, resolve
from nnrecipe.reporting.lm import write_mlm_report
from nnrecipe.runs import Run
from nnrecipe.tasks.family import Inference, Splits
from nnrecipe.tasks.supervised import Setup

MODEL_DIR = "model"  # the run's model folder, for text and NER recipes to start from


def load_encoder(name: str):
    """(AutoModelForMaskedLM, fast tokenizer) of a pretrained encoder; a head the folder lacks starts fresh."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    quiet_transformers()
    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForMaskedLM.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.name: cannot load {name!r} as a masked language model: {str(e).splitlines()[0]}"
        ) from None
    if tokenizer.mask_token is None:
        raise UserError(
            f"model.name: {name!r} has no mask token; objective: mlm needs an encoder such as BERT or MiniLM"
        )
    return model, tokenizer


def continuation_table(tokenizer) -> np.ndarray:
    """Per vocabulary id: does the token continue the previous token's word (for whole-word masking)?"""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if any(t.startswith("##") for t in tokens):  # WordPiece (BERT, MiniLM): "##" continues a word
        return np.array([t.startswith("##") for t in tokens])
    for marker in ("\u2581", "\u0120"):  # SentencePiece "▁" and byte-level BPE "Ġ" open a word
        if sum(t.startswith(marker) for t in tokens) > len(tokens) // 10:
            return np.array([not t.startswith(marker) for t in tokens])
    raise UserError("masking.whole_word: cannot tell where words start in this tokenizer's vocabulary")


class MaskedBlocks:
    """Batches of masked blocks: input_ids, attention_mask and labels (-100 except at the masked tokens)."""

    def __init__(self, blocks: BlockLoader, tokenizer, masking, seed: int, fixed: bool = False):
        from transformers import DataCollatorForLanguageModeling

        self.blocks, self.tokenizer, self.seed, self.fixed = blocks, tokenizer, seed, fixed
        self.collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=masking.probability,
            # whole words all become [MASK] (as documented); said here, not set by transformers with a warning
            mask_replace_prob=1.0 if masking.whole_word else masking.mask_replace,
            random_replace_prob=0.0 if masking.whole_word else masking.random_replace,
            whole_word_mask=masking.whole_word,
        )
        self.continues = torch.from_numpy(continuation_table(tokenizer)) if masking.whole_word else None

    def __len__(self) -> int:
        return len(self.blocks)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        tok = self.tokenizer
        for i, (x, _) in enumerate(self.blocks.batches(epoch, start), start=start):
            x = x.cpu()
            ends = torch.full((len(x), 1), tok.cls_token_id), torch.full((len(x), 1), tok.sep_token_id)
            ids = torch.cat([ends[0], x, ends[1]], dim=1)
            special = torch.zeros_like(ids)
            special[:, [0, -1]] = 1
            offsets = None
            if self.continues is not None:  # offsets whose gaps mark word starts, as a fast tokenizer's would
                start_of_word = ~self.continues[ids]
                end = torch.cumsum(1 + start_of_word.long(), dim=1)
                offsets = torch.stack([end - 1, end], dim=-1)
            g = derived_seed(self.seed, 0 if self.fixed else epoch, i, self.blocks.rank)
            self.collator.generator = torch.Generator().manual_seed(g)
            inputs, labels = self.collator.torch_mask_tokens(ids.clone(), special, offsets)
            device = self.blocks.device
            yield {
                "input_ids": inputs.to(device),
                "attention_mask": torch.ones_like(inputs).to(device),
                "labels": torch.as_tensor(labels).to(device),
            }


class MaskedOnly(nn.Module):
    """A masked-LM model that projects onto the vocabulary at the masked positions only: the other 85% of
    the projection (a 30,522-wide matmul per token for MiniLM) is wasted work: a MiniLM step (32 x 128 tokens,
    bf16, 2 cores) takes 1.8 s instead of 3.2 s.
    Works where the model is its encoder plus one head module (BERT's `cls`, RoBERTa's `lm_head`); any other
    layout computes the full logits and keeps the masked rows."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        others = [m for m in model.children() if m is not model.base_model]
        self.head = others[0] if len(others) == 1 and model.base_model is not model else None

    def forward(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the masked positions, their labels)."""
        keep = labels != -100
        if self.head is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[keep], labels[keep]
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.head(hidden[keep]), labels[keep]


class MaskedTokens:
    """The engine's TrainTask: cross-entropy at the masked tokens, counted in masked tokens."""

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        logits, labels = model(**batch)
        return torch.nn.functional.cross_entropy(logits.float(), labels), len(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: MaskedBlocks) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, right, count = 0.0, 0, 0
        for batch in loader.batches():
            logits, labels = model(**batch)
            logits = logits.float()
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            right += int((logits.argmax(-1) == labels).sum())
            count += len(labels)
        model.train(was_training)
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "masked_accuracy": right / max(1, count)}


def stream(tokenizer, text: str, where: str) -> np.ndarray:
    """The text as one stream of the encoder's token ids, no special tokens; long text in pieces."""
    piece, ids = 1 << 16, []
    for i in range(0, len(text), piece):
        ids += tokenizer(text[i : i + piece], add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"{where}: no tokens")
    return np.asarray(ids, dtype=np.uint32 if len(tokenizer) > 65_535 else np.uint16)


def check(recipe) -> None:
    if not recipe.model.pretrained:
        raise UserError(
            f"model.name: objective mlm continues a pretrained encoder (minilm or a local folder), not {recipe.model.name}"
        )
    if recipe.model.finetune != "full":
        raise UserError("model.finetune: objective mlm trains the whole encoder (finetune: full)")


def train_loader(recipe, tokenizer, text: str, device, rank: int = 0, world: int = 1) -> MaskedBlocks:
    d, t = recipe.data, recipe.train
    blocks = BlockLoader(
        stream(tokenizer, text, "data.train"),
        d.block_size - 2,
        t.batch_size,
        batches=d.batches_per_epoch,
        device=device,
        shuffle=True,
        seed=t.seed,
        rank=rank,
        world_size=world,
        where="data.train",
    )  # fmt: skip
    return MaskedBlocks(blocks, tokenizer, recipe.masking, t.seed)


def eval_loader(recipe, tokenizer, text: str, device, where: str = "validation text") -> MaskedBlocks:
    """Consecutive blocks of `text`, masked the same way every time they are read."""
    d, t = recipe.data, recipe.train
    blocks = BlockLoader(
        stream(tokenizer, text, where), d.block_size - 2, t.eval_batch_size, batches=d.eval_batches,
        device=device, where=where,
    )  # fmt: skip
    return MaskedBlocks(blocks, tokenizer, recipe.masking, t.seed, fixed=True)


def setup(recipe, splits: Splits, acc) -> Setup:
    check(recipe)
    model, tokenizer = load_encoder(recipe.model.name)
    if recipe.data.block_size > model.config.max_position_embeddings:
        raise UserError(
            f"data.block_size: {recipe.data.block_size} is longer than {recipe.model.name}'s context "
            f"({model.config.max_position_embeddings} tokens)"
        )
    train = train_loader(recipe, tokenizer, splits.train, acc.device, acc.process_index, acc.num_processes)
    val = eval_loader(recipe, tokenizer, splits.val, acc.device)
    trainable, total = parameter_counts(model)
    spec = {
        "objective": "mlm",
        "model": {"kind": "mlm", "name": recipe.model.name, "block_size": recipe.data.block_size},
        "tokenizer": {"kind": "pretrained"},
        "parameters": total,
        "trainable_parameters": trainable,
    }
    m = recipe.masking
    wrapped = MaskedOnly(model)
    return Setup(
        model=wrapped,
        optimizer=build_optimizer(wrapped, recipe.optim),
        task=MaskedTokens(),
        train_loader=train,
        val_loader=val,
        spec=spec,
        summary=f"{recipe.model.name} masked-LM pretraining: {total:,} parameters; masking {m.probability:.0%}"
        f"{' (whole words)' if m.whole_word else ''}; {len(train.blocks.tokens):,} train / "
        f"{len(val.blocks.tokens):,} val tokens, blocks of {recipe.data.block_size}",
    )


def inference(run: Run, device="cpu") -> Inference:
    spec = run.spec()
    model, tokenizer = load_encoder(spec["model"]["name"])
    MaskedOnly(model).load_state_dict(load_weights(run.best_checkpoint))
    return Inference(model.to(device).eval(), [], spec, tokenizer)


def save_model_folder(run: Run) -> Path:
    """The best weights as a model folder (written beside, then renamed): what `model.name` can point at."""
    import shutil

    inf = inference(run)
    folder, tmp = run.dir / MODEL_DIR, run.dir / f"{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    inf.model.save_pretrained(str(tmp))
    inf.tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    console.print(f"model folder for text and NER recipes: {folder} (model.name: {folder})", soft_wrap=True)
    return folder


def report(run: Run, recipe, part: str, split: str, device, source: str | None = None) -> dict[str, Any]:
    inf = inference(run, device)
    val = eval_loader(recipe, inf.tokenizer, part, device, where=f"{split} text")
    scores = MaskedTokens().evaluate(MaskedOnly(inf.model), val)
    summary = scores | {"tokens": len(val.blocks.tokens), "block_size": recipe.data.block_size}
    write_mlm_report(run.dir, split, summary | {"source": source or f"{split} split"}, run.dir / MODEL_DIR)
    console.print(
        f"\n{split} masked-LM loss {scores['loss']:.4f} (perplexity {scores['perplexity']:.2f}, masked-token "
        f"accuracy {scores['masked_accuracy']:.3f})"
    )
    return summary
