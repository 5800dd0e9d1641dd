"""What the two text families trained on labelled examples (text classification and NER) share: building the
encoder (pretrained, with its head and peft mode, or a baseline from scratch) with its head, loading a trained
run, keeping peft adapters alone, pruning and merging support, and the text side of serving."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nnrecipe.data.splits import spread_sample
from nnrecipe.engine.adversarial import EmbeddingAdversarial
from nnrecipe.engine.checkpoint import load_weights
from nnrecipe.engine.loop import Callback
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.errors import UserError
from nnrecipe.models.hf import parameter_counts, resolve, save_adapter
from nnrecipe.runs import Run
from nnrecipe.tasks import text_continual
from nnrecipe.tasks.continual_parts import fisher_information, grown_state, save_fisher
from nnrecipe.tasks.family import Inference, LogitsExport, Splits, TextExplainSubject
from nnrecipe.tasks.serving import Predictor, TextInputs, ort_session
from nnrecipe.tasks.supervised import Setup, SupervisedFamily
from nnrecipe.tasks.text_models import TOKENIZER_DIR, from_scratch, new_model, saved_model


class AdaLoraSchedule(Callback):
    """Engine callback: AdaLoRA re-allocates ranks from gradient importance after each optimizer step,
    before the gradients are cleared (peft's `update_and_allocate`)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def before_zero_grad(self, trainer) -> None:
        self.model.base_model.update_and_allocate(trainer.state.global_step)


class TransformerFamily(SupervisedFamily):
    """A text encoder with a `head` ("sequence" or "token"): pretrained (Hugging Face) and fine-tuned fully, as
    a frozen probe or with a peft method, or a from-scratch baseline (text_models.py)."""

    fsdp = True

    head: ClassVar[str]
    ensemble_inputs = ("labels", "max_length")  # and one tokenizer (checked); the encoders and modes may differ
    cpu_bf16 = True  # transformers: bf16 autocast makes a MiniLM step 1.85x faster on an AMX CPU
    adversarial_methods = ("fgm", "pgd")  # in the token embeddings, an L2 ball per example
    # 0.25 per example: the usual BERT FGM recipe moves a whole batch's embeddings by 1.0 together (~0.2 each
    # in a batch of 16-32); 1.0 per example stopped MiniLM learning SST-2 (loss 0.69 after an epoch), where a
    # sentence's embeddings have a norm of ~4 (a token's ~1.1).
    adversarial_epsilon = (0.25, None)

    # -- what each of the two families supplies -------------------------------------------------------

    @abstractmethod
    def labels_of(self, splits: Splits) -> list[str]:
        """The label (or tag) names of a new run, in the order of the head's outputs."""

    @abstractmethod
    def loader(self, tokenizer, part, labels: list[str], batch_size: int, max_length: int, device, **kw):
        """`part` tokenised once and batched the way the family's model takes it, labels included."""

    @abstractmethod
    def train_task(self, labels: list[str], splits: Splits):
        """The engine's TrainTask."""

    @abstractmethod
    def describe(self, splits: Splits, labels: list[str]) -> str:
        """The data's half of the run's first console line."""

    @abstractmethod
    def texts_of(self, part) -> list[str]:
        """The raw text of `part`, to fit a from-scratch model's tokenizer on."""

    # -- the rest, shared ---------------------------------------------------------------------------------

    def setup(self, recipe, splits: Splits, acc, run: Run) -> Setup:
        """The encoder with a fresh head and its peft mode (or a from-scratch model and the tokenizer fitted for
        it, saved in the run), the loaders, the optimiser, and AdaLoRA's rank schedule."""
        labels = self.labels_of(splits)
        d, t, m = recipe.data, recipe.train, recipe.model
        cont, old_tokenizer, old_model = text_continual.continued(self, recipe, labels), None, None
        if cont is None and len(labels) < 2:  # it trained a model that is always right and learns nothing
            raise UserError(
                f"data.train: every training example is labelled {labels[0]!r}: nothing to tell apart (a classifier "
                "needs two labels or more; NER needs entity tags besides O)"
            )
        train = splits.train
        if cont is not None:
            labels, old_state = cont.labels, load_weights(cont.prior.best_checkpoint)
            if from_scratch(m.name) or recipe.continual.strategy == "lwf":  # its tokenizer; the teacher
                old_model, old_tokenizer = saved_model(cont.prior.spec(), cont.prior.dir, self.head)
                old_model.load_state_dict(old_state)
            train = train if cont.memory is None else train.concat(cont.memory)
        steps = t.total_steps(-(-len(train) // t.batch_size) // t.grad_accum_steps)
        model, tokenizer, architecture = new_model(
            m, labels, self.head, self.texts_of(train), tokenizer=old_tokenizer if from_scratch(m.name) else None,
            total_steps=steps,
        )  # fmt: skip
        if cont is not None:
            grown_state(model, old_state)
            if old_tokenizer is not None:
                text_continual.warn_unknown_words(old_tokenizer, self.texts_of(splits.train))
        if architecture and acc.is_main_process:
            tokenizer.save_pretrained(str(run.dir / TOKENIZER_DIR))
        trainable, total = parameter_counts(model)
        spec = {
            "labels": labels,
            "model": m.name,
            "finetune": m.finetune,
            "peft": m.peft_options() | {"total_steps": steps},
            "max_length": d.max_length,
            "trainable_parameters": trainable,
            "total_parameters": total,
        }
        if architecture:
            spec |= {"architecture": architecture, "vocab_size": len(tokenizer)}
        train_loader = self.loader(
            tokenizer, train, labels, t.batch_size, d.max_length, acc.device, shuffle=True, seed=t.seed,
            group_by_length=d.group_by_length, rank=acc.process_index, world_size=acc.num_processes,
        )  # fmt: skip
        val_loader = None
        if splits.val:
            val_loader = self.loader(tokenizer, splits.val, labels, t.eval_batch_size, d.max_length, acc.device)
        base = self.train_task(labels, splits)
        if t.adversarial is not None:
            base = EmbeddingAdversarial(base, self.adversarial_of(recipe))
        if cont is not None and recipe.continual.strategy == "lwf":
            old_model.to(acc.device)
        task = text_continual.text_continual_task(
            recipe, base, model, old_model, cont, acc.device, lambda: self.fisher_of(cont.prior)
        )
        return Setup(
            model=model,
            optimizer=build_optimizer(model, recipe.optim),
            task=task,
            train_loader=train_loader,
            val_loader=val_loader,
            spec=spec,
            summary=(
                f"{m.name} from scratch: {total:,} parameters, a {m.tokenizer} vocabulary of {len(tokenizer):,}"
                if architecture
                else f"{m.name} ({m.finetune}): {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
            )
            + f"; {self.describe(splits, labels)}"
            + text_continual.describe(recipe.continual, cont),
            callbacks=[AdaLoraSchedule(model)] if m.finetune == "adalora" else [],
            meta={"continues": str(cont.prior.dir)} if cont is not None else {},
            keep={"train": train, "prior": cont.prior if cont else None},
        )

    def trained(self, run: Run, device="cpu") -> Inference:
        """The run's base model and mode rebuilt, its best weights (the EMA copy when kept) loaded."""
        spec = run.spec()
        model, tokenizer = saved_model(spec, run.dir, self.head)
        model.load_state_dict(load_weights(run.best_checkpoint))
        return Inference(model.to(device).eval(), spec["labels"], spec, tokenizer)

    def run_files(self, run: Run) -> list[Path]:
        folder = run.dir / TOKENIZER_DIR
        return [folder] if folder.is_dir() else []

    def finish(self, run: Run, recipe, setup: Setup) -> None:
        """peft runs keep the adapter weights alone too (adapter/), loadable with peft on the base model; a
        continual strategy leaves what the next stage needs (the replay memory, the Fisher information)."""
        save_adapter(self.inference(run).model, recipe.model.finetune, run.dir / "adapter")
        c = recipe.continual
        if c.strategy == "replay":
            text_continual.save_memory(run, self, setup.keep["train"], c.memory, recipe.train.seed)
        elif c.strategy == "ewc":
            inf = self.trained(run)
            loader = self.loader(inf.tokenizer, setup.keep["train"], inf.labels, recipe.train.eval_batch_size,
                                 inf.spec["max_length"], "cpu")  # fmt: skip
            save_fisher(run, inf.model, loader, setup.keep["prior"], text_continual.TEXTS)

    def fisher_of(self, run: Run) -> dict[str, torch.Tensor]:
        """The Fisher information of a run's model on its own training data."""
        recipe, inf = run.recipe(), self.trained(run)
        part = self.splits(recipe).train
        loader = self.loader(
            inf.tokenizer, part, inf.labels, recipe.train.eval_batch_size, inf.spec["max_length"], "cpu"
        )
        return fisher_information(inf.model, loader, text_continual.TEXTS)

    def continue_from(self, recipe, path: Path) -> None:
        recipe.continual.from_run = Path(path).resolve()  # the stage's recipe.yaml works from anywhere

    # The rows of the replay memory (JSON-able) and back, the key an equal share is kept per.
    @abstractmethod
    def memory_rows(self, part) -> list[dict[str, Any]]: ...

    @abstractmethod
    def memory_part(self, rows: list[dict[str, Any]]): ...

    @abstractmethod
    def memory_keys(self, part) -> list[str]: ...

    def check_prune_finetune(self, recipe) -> None:
        if from_scratch(recipe.model.name):
            raise UserError(
                f"prune: offered for pretrained encoders; {recipe.model.name} is a from-scratch baseline "
                "(make it smaller with model.hidden_size instead)"
            )
        if recipe.model.finetune != "full":
            raise UserError(
                f"--finetune-epochs: offered for fully fine-tuned text runs; this one is {recipe.model.finetune} "
                "(prune it without fine-tuning)"
            )

    def prune_start(self, recipe, model: nn.Module, folder: Path) -> None:
        """A fully fine-tuned encoder becomes a model folder the recipe loads like any base model."""
        self.check_prune_finetune(recipe)
        from transformers import AutoTokenizer

        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve(recipe.model.name)).save_pretrained(folder)
        recipe.model.name = str(folder)

    def merge_class(self):
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        return AutoModelForSequenceClassification if self.head == "sequence" else AutoModelForTokenClassification

    def explain_sample(self, run: Run, labels: list[str]):
        """`TextExplainSubject.sample` for this family's checks; None: it offers none."""
        return None

    def explain_subject(self, run: Run) -> TextExplainSubject:
        """The model predict uses (its temperature included), its tokenizer, and validation texts to check on."""
        inf = self.inference(run)
        if not hasattr(inf.model, "get_input_embeddings"):
            raise UserError(f"explain: {run.dir} is an ensemble of several encoders; explain one member run")
        pad = inf.tokenizer.pad_token_id if inf.tokenizer.pad_token_id is not None else 0
        return TextExplainSubject(inf.model, inf.labels, inf.tokenizer, inf.spec["max_length"], self.head, pad,
                                  self.explain_sample(run, inf.labels))  # fmt: skip

    export_output: ClassVar[tuple[str, ...]] = ("batch",)  # the logits' axes before the label axis
    export_notes: ClassVar[dict[str, str]] = {}  # preprocessing the card adds for this family

    def export_subject(self, run: Run, limit: int = 512) -> LogitsExport:
        """The encoder as token ids in, logits out, on (up to `limit`) validation examples (test without val)."""
        inf = self.inference(run)
        splits = self.splits(run.recipe())
        part = splits.val if splits.val is not None else splits.test
        if part is None:
            raise UserError(f"{run.dir}: no validation or test split to check the export on")
        # Exported the way Hugging Face Optimum exports encoders: eager attention (explicit MatMul/Softmax
        # instead of the fused SDPA call) through the TorchScript-based exporter. Measured on MiniLM (int8, this
        # CPU): a batch of 8 in 20.2 ms against 24.6 ms for the dynamo exporter with SDPA; under serving load
        # 206 vs 190 req/s (bench/RESULTS.md).
        if hasattr(inf.model, "set_attn_implementation"):  # the from-scratch models have no attention
            inf.model.set_attn_implementation("eager")
        part = part.subset(spread_sample(len(part), limit))
        batches = list(self.loader(inf.tokenizer, part, inf.labels, 64, inf.spec["max_length"], "cpu").batches())
        for b in batches:
            b.setdefault("token_type_ids", torch.zeros_like(b["input_ids"]))
        targets = [b.pop("labels") for b in batches]
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inf.tokenizer.model_input_names]
        facts = {
            "input": {n: {"shape": ["batch", "sequence"], "dtype": "int64"} for n in names},
            "preprocessing": {
                "tokenizer": f"{TOKENIZER_DIR}/ in the run (fitted to its training text)"
                if from_scratch(inf.spec["model"])
                else "the run's tokenizer (saved by `nnrecipe merge`, or the base model's)",
                "max_length": inf.spec["max_length"],
                "padding": "to the longest sequence in the batch",
                **self.export_notes,
            },
            "output": {
                "name": "logits",
                "shape": [*self.export_output, len(inf.labels)],
                "softmax": "apply for probabilities",
            },
        }
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
        model = LogitsOnly(inf.model).eval()
        return LogitsExport(
            model, batches, targets, names, dynamic, facts, inf.labels, inf.spec["model"], "torchscript"
        )


class LogitsOnly(nn.Module):
    """A Hugging Face model as tensors in, logits out (what ONNX and TorchScript can hold)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


class OrtTransformer(nn.Module):
    """An exported text model behind the interface of a Hugging Face one: model(**batch).logits."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.names = {i.name for i in session.get_inputs()}

    def forward(self, **batch: torch.Tensor):
        feeds = {k: v.cpu().numpy() for k, v in batch.items() if k in self.names}
        if "token_type_ids" in self.names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(None, feeds)[0]))


class TransformerPredictor(TextInputs, Predictor):
    """Serving a text or NER run: texts in; the eager model, or its ONNX export behind the same interface."""

    def __init__(self, family: TransformerFamily, run: Run, onnx_path: Path | None, precision: str):
        inf = family.inference(run)
        self.tokenizer, self.spec, self.labels, self.model_name = inf.tokenizer, inf.spec, inf.labels, inf.spec["model"]
        self.onnx_path, self.precision = onnx_path, "onnx" if onnx_path is not None else precision
        self.model = OrtTransformer(ort_session(onnx_path)) if onnx_path is not None else inf.model

    def facts(self) -> dict[str, Any]:
        return {
            "finetune": self.spec["finetune"],
            "input": {
                "kind": "text",
                "json": "strings in 'inputs'",
                "multipart": "UTF-8 text files",
                "max_tokens": self.spec["max_length"],
                "longer": "truncated",
            },
        }
