"""Language modelling: a char-rnn (RNN/LSTM/GRU) or a small GPT trained from scratch on a text stream with
the shared engine, or a local Hugging Face causal LM fine-tuned (fully or with LoRA) on it; loss, perplexity
and bits per character; sampling with a KV cache; `nnrecipe generate`.

An epoch is `data.batches_per_epoch` batches of random contiguous blocks (seeded per batch, so resume is
exact); validation reads the held-out stream in consecutive blocks. The run keeps its tokenizer (the char
vocabulary in its spec, a BPE tokenizer.json beside it) and its token streams memory-mapped under tokens/.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.lm import (
    BlockLoader,
    HFTokenizer,
    Tokenizer,
    encode_stream,
    fit_tokenizer,
    load_tokenizer,
    read_text,
)
from nnrecipe.engine.checkpoint import load_weights
from nnrecipe.engine.config import validated
from nnrecipe.engine.loop import Callback, console
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.errors import UserError, existing_data_files
from nnrecipe.models.hf import parameter_counts, resolve
from nnrecipe.models.hf_causal import load_causal_lm
from nnrecipe.models.sequence import SequenceConfig, build_sequence_model, generate, no_decay_parameters
from nnrecipe.reporting.lm import write_lm_report
from nnrecipe.runs import Run
from nnrecipe.tasks import masked_lm, outputs
from nnrecipe.tasks.family import DoctorPlan, Inference, LogitsExport, Metric, Splits, register_family
from nnrecipe.tasks.lm_doctor import plan as doctor_plan
from nnrecipe.tasks.lm_recipe import LMRecipe, Sampling
from nnrecipe.tasks.serving import InputError, Predictor, TextInputs
from nnrecipe.tasks.supervised import Setup, SupervisedFamily, plot_paths

LN2 = math.log(2)


class LogitsOf(nn.Module):
    """A sequence model as ids in, logits out (the graph an export holds)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]


class NextToken:
    """The engine's TrainTask: cross-entropy of every next token; examples counted in tokens."""

    def __init__(self, tokens_per_char: float = 1.0):
        self.tokens_per_char = tokens_per_char

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits, _ = model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), y.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: BlockLoader) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for x, y in loader.batches():
            logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        model.train(was_training)
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "bits_per_char": loss / LN2 * self.tokens_per_char}


class SampleEveryEpoch(Callback):
    """Logs a sample from the recipe's first prompt (fixed seed) to TensorBoard at the end of each epoch, so
    the text can be watched improving while the run trains."""

    def __init__(self, family: LanguageModeling, tokenizer, sample, steps_per_epoch: int):
        self.family, self.tokenizer, self.sample, self.every = family, tokenizer, sample, steps_per_epoch

    def after_step(self, trainer) -> None:
        step = trainer.state.global_step
        # a sharded model's every forward is a collective: then every process samples, rank 0 logs
        if step % self.every or not (trainer.acc.is_main_process or trainer.sharded):
            return
        s = self.sample
        inf = Inference(trainer.eval_model(), [], None, self.tokenizer)
        prompt = s.prompts[0] if s.prompts else "\n"
        out = self.family.continue_text(inf, prompt, min(s.max_new_tokens, 200), s.temperature, s.top_k, s.top_p, s.seed,
                                        device=trainer.acc.device)  # fmt: skip
        if trainer.acc.is_main_process:
            trainer.tracker.log_text("sample", prompt + out["text"], step)


def stream_splits(recipe: LMRecipe) -> Splits:
    """The training text and the validation text (its own file, or the stream's last val_fraction)."""
    d = recipe.data
    existing_data_files(d, ("train", "val"), folders=True)
    text = read_text(d.train, d.text_field)
    if not text.strip():
        raise UserError(f"data.train: {d.train} holds no text")
    if d.val is not None:
        return Splits(text, read_text(d.val, d.text_field), None)
    cut = int(len(text) * (1 - d.val_fraction))
    return Splits(text[:cut], text[cut:], None)


def model_config(recipe: LMRecipe, vocab_size: int) -> SequenceConfig:
    m = recipe.model
    if m.name == "gpt" and m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be a multiple of model.n_head ({m.n_head})")
    return SequenceConfig(
        m.name,
        vocab_size,
        recipe.data.block_size,
        m.n_layer,
        m.n_embd,
        m.hidden,
        m.n_head,
        m.dropout,
        m.bias,
        m.tie_weights,
    )


def recipe_tokenizer(recipe: LMRecipe, splits: Splits) -> Tokenizer:
    """The recipe's tokenizer: fitted to the text for a model from scratch, the model's own for a pretrained one."""
    d, m = recipe.data, recipe.model
    if not m.pretrained:
        # A char vocabulary covers the validation text too (as nanoGPT's covers the whole file): knowing
        # which characters exist leaks nothing, and a rare one only in the last 10% would otherwise stop the run.
        return fit_tokenizer(d.tokenizer, splits.train, d.vocab_size, also=splits.val)
    if d.tokenizer != "auto":
        raise UserError(
            f"data.tokenizer: {m.name} is pretrained and reads its own tokenizer's ids; leave data.tokenizer: auto"
        )
    return HFTokenizer.load(Path(resolve(m.name)))


def new_model(recipe: LMRecipe, vocab_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """A model for a new run and its architecture as the spec keeps it (inference rebuilds it from that)."""
    m = recipe.model
    if not m.pretrained:
        cfg = model_config(recipe, vocab_size)
        return build_sequence_model(cfg), asdict(cfg)
    model = load_causal_lm(m.name, m.finetune, m.lora())
    vocab = model.get_input_embeddings().num_embeddings
    if vocab_size > vocab:
        raise UserError(f"model.name: {m.name}'s tokenizer has {vocab_size:,} ids, its embedding only {vocab:,}")
    if model.block_size and recipe.data.block_size > model.block_size:
        raise UserError(
            f"data.block_size: {recipe.data.block_size} is longer than {m.name}'s context ({model.block_size} tokens)"
        )
    arch = {"kind": "hf", "name": m.name, "finetune": m.finetune, "lora": m.lora(), "vocab_size": vocab}
    return model, arch | {"block_size": recipe.data.block_size}


def causal_only(run: Run, verb: str) -> None:
    """Generation, serving and export are for next-token models; a masked-LM run is a step towards a classifier."""
    if run.spec().get("objective") == "mlm":
        raise UserError(
            f"{verb}: {run.dir} is masked-LM pretraining; start a text or NER recipe from its model folder "
            f"(model.name: {run.dir / masked_lm.MODEL_DIR})"
        )


def model_name(spec: dict[str, Any]) -> str:
    """What the card and /v1/model call the run's model: the pretrained model's name, else the architecture."""
    return spec["model"].get("name", spec["model"]["kind"])


def saved_model(spec: dict[str, Any]) -> nn.Module:
    arch = spec["model"]
    if arch["kind"] == "hf":
        return load_causal_lm(arch["name"], arch["finetune"], arch["lora"])
    return build_sequence_model(SequenceConfig(**arch))


@register_family
class LanguageModeling(SupervisedFamily):
    name = "language_modeling"
    recipe = LMRecipe
    metric = Metric("loss", "min")
    output = outputs.GENERATION
    card_metrics = ("loss", "perplexity", "bits_per_char")
    predict_inputs = "texts"
    fsdp = True

    def splits(self, recipe: LMRecipe) -> Splits:
        return stream_splits(recipe)

    def bf16_on_cpu(self, recipe: LMRecipe) -> bool | None:
        """Pretrained transformers (causal or masked) are matmul-heavy as in the text families (MiniLM: 1.85x
        faster with bf16 autocast on AMX); for the small models from scratch it is timed."""
        return True if recipe.model.pretrained else None

    def setup(self, recipe: LMRecipe, splits: Splits, acc, run: Run) -> Setup:
        if recipe.objective == "mlm":
            return masked_lm.setup(recipe, splits, acc)
        d, t = recipe.data, recipe.train
        tokenizer = recipe_tokenizer(recipe, splits)
        if isinstance(tokenizer, HFTokenizer) and acc.is_main_process:
            tokenizer.tok.save(str(run.dir / "tokenizer.json"))
        for i, prompt in enumerate(recipe.sample.prompts):  # before training, not after it
            tokenizer.encode(prompt, f"sample.prompts[{i}]")
        streams = run.dir / "tokens"
        train = encode_stream(tokenizer, splits.train, streams / f"train.rank{acc.process_index}.bin", "data.train")
        val = encode_stream(tokenizer, splits.val, streams / f"val.rank{acc.process_index}.bin", "validation text")
        model, arch = new_model(recipe, tokenizer.vocab_size)
        tokens_per_char = tokenizer.tokens_per_char(splits.val[:100_000])
        trainable, n_params = parameter_counts(model)
        train_loader = BlockLoader(
            train,
            d.block_size,
            t.batch_size,
            batches=d.batches_per_epoch,
            device=acc.device,
            shuffle=True,
            seed=t.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            where="data.train",
        )
        val_loader = BlockLoader(
            val, d.block_size, t.eval_batch_size, batches=d.eval_batches, device=acc.device, where="validation text"
        )
        what = (
            f"{recipe.model.name} ({recipe.model.finetune}): {trainable:,} trainable of {n_params:,} parameters"
            if recipe.model.pretrained
            else f"{arch['kind']}: {n_params:,} parameters ({n_params / 1e6:.2f}M)"
        )
        summary = (
            f"{what}; {tokenizer.kind} tokenizer, vocabulary "
            f"{tokenizer.vocab_size:,}; {len(train):,} train / {len(val):,} val tokens, blocks of {d.block_size}"
        )
        spec = {
            "model": arch,
            "tokenizer": tokenizer.spec(),
            "tokens_per_char": tokens_per_char,
            "parameters": n_params,
            "trainable_parameters": trainable,
        }
        steps_per_epoch = -(-d.batches_per_epoch // t.grad_accum_steps)
        callbacks = (
            [SampleEveryEpoch(self, tokenizer, recipe.sample, steps_per_epoch)] if recipe.track.tensorboard else []
        )
        return Setup(
            model=model,
            optimizer=build_optimizer(model, recipe.optim, no_decay=no_decay_parameters(model)),
            task=NextToken(tokens_per_char),
            train_loader=train_loader,
            val_loader=val_loader,
            spec=spec,
            summary=summary,
            callbacks=callbacks,
        )

    def finish(self, run: Run, recipe: LMRecipe, setup: Setup) -> None:
        if recipe.objective == "mlm":
            masked_lm.save_model_folder(run)

    def inference(self, run: Run, device="cpu") -> Inference:
        spec = run.spec()
        if spec.get("objective") == "mlm":
            return masked_lm.inference(run, device)
        model = saved_model(spec)
        model.load_state_dict(load_weights(run.best_checkpoint))
        return Inference(model.to(device).eval(), [], spec, load_tokenizer(spec["tokenizer"], run.dir))

    def report(
        self, run: Run, recipe: LMRecipe, part: str, split: str, device, source: str | None = None
    ) -> dict[str, Any]:
        if recipe.objective == "mlm":
            return masked_lm.report(run, recipe, part, split, device, source)
        inf = self.inference(run, device)
        tokens = encode_stream(inf.tokenizer, part, where=f"{split} text")
        block = inf.spec["model"]["block_size"]
        loader = BlockLoader(tokens, block, recipe.train.eval_batch_size, device=device, where=f"{split} text")
        scores = NextToken(inf.tokenizer.tokens_per_char(part[:100_000])).evaluate(inf.model, loader)
        s = recipe.sample
        samples = [
            self.continue_text(inf, prompt, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed, device=device)
            for prompt in s.prompts
        ]
        scored = min(len(loader) * recipe.train.eval_batch_size, (len(tokens) - 1) // block) * block
        summary = scores | {"tokens": scored, "block_size": block}
        extra = {"source": source or f"{split} split", "samples": samples, "plots": plot_paths(run)}
        path = write_lm_report(run.dir, split, summary, extra)
        console.print(
            f"\n{split} loss {scores['loss']:.4f} (perplexity {scores['perplexity']:.2f}, "
            f"{scores['bits_per_char']:.3f} bits per character) on {scored:,} tokens"
        )
        for sample in samples[:2]:
            console.print(f"sample: {(sample['prompt'] + sample['text'])[:300]!r}", markup=False)
        console.print(f"report: {path} and {run.dir / 'report.md'}", soft_wrap=True)
        return summary

    def read(self, run: Run, recipe: LMRecipe, path: Path) -> str:
        return read_text(path, recipe.data.text_field)

    def continue_text(
        self,
        inf: Inference,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int,
        use_cache: bool = True,
        device="cpu",
        on_piece: Callable[[str], None] | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """The prompt's continuation, with how many tokens it took and how fast they came. `on_piece` is
        told each new piece of text as soon as its token is drawn (streaming); `stop_when` is asked after
        each token whether to end there (the client hung up, or its deadline passed)."""
        ids = prompt_ids(inf.tokenizer, prompt)
        if not ids:
            raise UserError("the prompt encodes to no tokens")
        new_ids, shown = [], [0]

        def stop(token: int) -> bool:
            if on_piece is not None:  # decode what is new so far: a multi-byte character may span tokens
                new_ids.append(token)
                text = inf.tokenizer.decode(new_ids)
                if len(text) > shown[0] and not text.endswith("\ufffd"):
                    on_piece(text[shown[0] :])
                    shown[0] = len(text)
            return stop_when is not None and stop_when()

        start = time.perf_counter()
        out = generate(
            inf.model,
            torch.tensor([ids], device=device),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
            stop=stop,
        )
        seconds = time.perf_counter() - start
        new = out[0, len(ids) :].tolist()
        return {
            "prompt": prompt,
            "text": inf.tokenizer.decode(new),
            "new_tokens": len(new),
            "tokens_per_s": len(new) / max(seconds, 1e-9),
        }

    def generate(self, run: Run, prompt: str, **options: Any) -> dict[str, Any]:
        """`nnrecipe generate`: options default to the recipe's `sample` section."""
        causal_only(run, "generate")
        return self.continue_text(self.inference(run), prompt, **sampling(run.recipe().sample, options))

    def doctor(self, recipe: LMRecipe) -> DoctorPlan:
        if recipe.model.pretrained:
            raise UserError(
                f"doctor: its checks judge a model at initialisation (loss near ln(vocabulary), ...); {recipe.model.name} "
                "starts pretrained: run the doctor on a model from scratch (model.name: gpt, lstm...)"
            )
        return doctor_plan(recipe, self.splits(recipe), lambda vocab_size: model_config(recipe, vocab_size))

    def predictor(self, run: Run, onnx_path: Path | None = None, precision: str = "fp32") -> LMPredictor:
        causal_only(run, "serve")
        if onnx_path is not None:
            raise UserError("--onnx: language-model runs are served by PyTorch (generation needs the KV cache)")
        return LMPredictor(self, run)

    def export_subject(self, run: Run, limit: int = 16) -> LogitsExport:
        """The model as token ids in (batch x time, both free up to the block), logits out, checked on up to
        `limit` validation blocks; generation loops outside the graph, without the cache."""
        causal_only(run, "export")
        recipe, inf = run.recipe(), self.inference(run)
        block = inf.spec["model"]["block_size"]
        tokens = encode_stream(inf.tokenizer, self.splits(recipe).val, where="validation text")
        x, y = next(iter(BlockLoader(tokens, block, limit, batches=1, where="validation text").batches()))
        facts = {
            "input": {"name": "input", "shape": ["batch", "time"], "dtype": "int64", "max_time": block},
            "preprocessing": {
                "tokenizer": inf.spec["tokenizer"]["kind"],
                "vocab_size": inf.spec["model"]["vocab_size"],
            },
            "output": {
                "name": "logits",
                "shape": ["batch", "time", inf.spec["model"]["vocab_size"]],
                "softmax": "over the last axis",
            },
        }
        dynamic = {"input": {0: "batch", 1: "time"}}
        return LogitsExport(
            LogitsOf(inf.model).eval(), [{"input": x}], [y], ["input"], dynamic, facts, [], model_name(inf.spec)
        )

    def predict(self, run: Run, inputs: list[str]) -> list[dict[str, Any]]:
        causal_only(run, "predict")
        inf, s = self.inference(run), run.recipe().sample
        for i, prompt in enumerate(inputs):  # all read before any is continued, the bad one named
            prompt_ids(inf.tokenizer, prompt, f"prompt {i + 1} of {len(inputs)}" if len(inputs) > 1 else "the prompt")
        return [self.continue_text(inf, p, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed) for p in inputs]


class LMPredictor(TextInputs, Predictor):
    """Serving: /v1/predict continues each prompt with the recipe's sampling settings; /v1/generate takes
    one prompt and its own settings. `limit` (the server's --max-new-tokens) caps both."""

    limit: int | None = None

    def __init__(self, family: LanguageModeling, run: Run):
        self.family, self.inf, self.sample = family, family.inference(run), run.recipe().sample
        self.labels, self.model_name = [], model_name(self.inf.spec)

    def decode_text(self, item: str, index: int) -> str:
        """The prompt, once the tokenizer can read it (a char it never saw was a 500); empty is allowed:
        generation starts from a new line."""
        try:
            prompt_ids(self.inf.tokenizer, item, f"inputs[{index}]")
        except UserError as e:
            raise InputError(str(e)) from None
        return item

    def predict(self, prompts: list[str]) -> list[dict[str, Any]]:
        rows = [self.generate(p) for p in prompts]  # the recipe's length went past the server's cap
        return [{k: r[k] for k in ("prompt", "text", "new_tokens")} for r in rows]

    def check(self, prompt: str, where: str = "the prompt") -> None:
        """A clear error now for a prompt the tokenizer cannot read (before a stream has started), naming
        `where` (a request's field)."""
        prompt_ids(self.inf.tokenizer, prompt, where)

    def generate(self, prompt: str, **options: Any) -> dict[str, Any]:
        """`options` over the recipe's sample section; the length held to `limit`."""
        s = sampling(self.sample, options)
        if self.limit is not None:
            s["max_new_tokens"] = min(s["max_new_tokens"], self.limit)
        return self.family.continue_text(self.inf, prompt, **s)

    def facts(self) -> dict[str, Any]:
        cfg = self.inf.spec["model"]
        return {
            "input": {
                "kind": "text prompt",
                "json": "strings in 'inputs' (/v1/predict) or {prompt, ...} (/v1/generate)",
            },
            "model_config": cfg,
            "tokenizer": self.inf.spec["tokenizer"]["kind"],
        }


def sampling(sample: Sampling, options: dict[str, Any]) -> dict[str, Any]:
    """The recipe's sample section with the caller's options over it (those given; top_k 0 = all), held to
    the section's own rules (a seed past 2**32 - 1 ended in a traceback from torch's generator), plus the
    caller's other options (use_cache)."""
    given = {k: v for k, v in options.items() if v is not None}
    s = sample.model_dump() | {k: v for k, v in given.items() if k in Sampling.model_fields}
    if s["top_k"] == 0:
        s["top_k"] = None
    s = validated(Sampling, s, options=True).model_dump()
    s.pop("prompts")
    return s | {k: v for k, v in given.items() if k not in Sampling.model_fields}


def prompt_ids(tokenizer, prompt: str, where: str = "the prompt") -> list[int]:
    """The prompt's token ids; an empty prompt starts a new passage from a newline, or from a space where a
    character vocabulary never saw a newline (it was told of a newline it could not read). Errors name
    `where` (which of several prompts)."""
    if prompt:
        return tokenizer.encode(prompt, where)
    for start in ("\n", " "):
        try:
            return tokenizer.encode(start, where)
        except UserError:
            continue
    raise UserError(f"{where} is empty, and this vocabulary has no newline or space to begin with: give a prompt")
