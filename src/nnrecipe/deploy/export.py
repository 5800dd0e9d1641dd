"""Export a trained run to ONNX (optionally int8) or TorchScript, checked against PyTorch on real
validation inputs, with a model card beside every artefact.

An export that does not reproduce the PyTorch outputs within tolerance fails and leaves no artefact:
a silently wrong model is worse than none.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrecipe.data.images import load_splits
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.runs import Run
from nnrecipe.tasks import image_classification as image

ATOL = 1e-4  # float32 logits: PyTorch vs ONNX Runtime kernels differ by rounding only


class ExportMismatch(UserError):
    """The exported model's outputs differ from PyTorch's."""


@dataclass
class ExportSubject:
    """What any task hands the exporter: a model taking positional tensors and returning logits, real
    validation batches keyed by input name, their targets (-100 = not scored) and the card's facts."""

    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    targets: list[torch.Tensor]
    input_names: list[str]
    dynamic: dict[str, dict[int, str]]
    card: dict[str, Any]
    exporter: str = "dynamo"  # or "torchscript": torch's TorchScript-based ONNX exporter (see text_subject)

    def args(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(batch[n] for n in self.input_names)


def validation_inputs(run: Run, limit: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-ready inputs (normalised) and labels from the run's validation split (test if none)."""
    recipe, spec = run.recipe(), image._spec(run)
    splits = load_splits(recipe.data)
    part = splits.val if splits.val is not None else splits.test
    if part is None:
        raise UserError(f"{run.dir}: no validation or test split to check the export on")
    part = part.subset(range(min(limit, len(part))))
    xs, ys = zip(*image._eval_loader(recipe, spec, part, "cpu").batches())
    return torch.cat(xs), torch.cat(ys)


def image_subject(run: Run) -> ExportSubject:
    spec = image._spec(run)
    x, y = validation_inputs(run)
    card = {
        "task": "image_classification",
        "labels": spec.classes,
        "model": spec.model,
        "input": {
            "name": "input",
            "shape": ["batch", spec.channels, spec.image_size, spec.image_size],
            "dtype": "float32",
        },
        "preprocessing": {
            "resize": [spec.image_size, spec.image_size],
            "channels": spec.channels,
            "scale": "pixel / 255",
            "mean": spec.mean,
            "std": spec.std,
            "formula": "(pixel / 255 - mean) / std per channel",
        },
        "output": {"name": "logits", "shape": ["batch", len(spec.classes)], "softmax": "apply for probabilities"},
    }
    return ExportSubject(
        image.inference_model(run, spec, "cpu"), [{"input": x}], [y], ["input"], {"input": {0: "batch"}}, card
    )


class _LogitsOnly(nn.Module):
    """A Hugging Face model as tensors in, logits out (what ONNX and TorchScript can hold)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def text_subject(run: Run, limit: int = 512) -> ExportSubject:
    from nnrecipe.tasks import task_module

    task = run.meta()["task"]
    module = task_module(task)
    model, tokenizer, meta = module.inference_model(run)
    recipe = run.recipe()
    train_set, val_set, test_set = module._splits(recipe)
    part = val_set if val_set is not None else test_set
    if part is None:
        raise UserError(f"{run.dir}: no validation or test split to check the export on")
    labels = meta["labels"]
    if task == "text_classification":
        from nnrecipe.data.text import TextSet

        part = TextSet(part.texts[:limit], part.pairs[:limit] if part.pairs else None, part.labels[:limit])
        loader = module._loader(tokenizer, part, {l: i for i, l in enumerate(labels)}, 64, meta["max_length"], "cpu")
        output = ["batch", len(labels)]
    else:
        from nnrecipe.data.tokens import TokenSet

        loader = module._loader(
            tokenizer, TokenSet(part.words[:limit], part.tags[:limit]), labels, 64, meta["max_length"], "cpu"
        )
        output = ["batch", "sequence", len(labels)]
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    # Exported the way Hugging Face Optimum exports encoders: eager attention (explicit MatMul/Softmax instead
    # of the fused SDPA call) through the TorchScript-based exporter. Measured on MiniLM (int8, this CPU): a
    # batch of 8 in 20.2 ms against 24.6 ms for the dynamo exporter with SDPA (dynamo with eager attention:
    # 23.4 ms); under serving load 206 vs 190 req/s (bench/RESULTS.md).
    model.set_attn_implementation("eager")
    batches = list(loader.batches())
    for b in batches:
        b.setdefault("token_type_ids", torch.zeros_like(b["input_ids"]))
    targets = [b.pop("labels") for b in batches]
    card = {
        "task": task,
        "labels": labels,
        "model": meta["model"],
        "input": {n: {"shape": ["batch", "sequence"], "dtype": "int64"} for n in names},
        "preprocessing": {
            "tokenizer": "the run's tokenizer (saved by `nnrecipe merge`, or the base model's)",
            "max_length": meta["max_length"],
            "padding": "to the longest sequence in the batch",
            **(
                {"words": "split the CoNLL way; each word's tag is read at its first sub-token"}
                if task == "token_classification"
                else {}
            ),
        },
        "output": {"name": "logits", "shape": output, "softmax": "apply for probabilities"},
    }
    return ExportSubject(
        _LogitsOnly(model).eval(),
        batches,
        targets,
        names,
        {n: {0: "batch", 1: "sequence"} for n in names},
        card,
        exporter="torchscript",
    )


def check_parity(reference: np.ndarray, candidate: np.ndarray, what: str, atol: float = ATOL) -> float:
    diff = float(np.abs(reference - candidate).max())
    if not np.isfinite(diff) or diff > atol:
        raise ExportMismatch(
            f"{what}: outputs differ from PyTorch by up to {diff:.3g} (tolerance {atol:g}); export refused"
        )
    return diff


def onnx_outputs(path: Path, x: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray:
    """Run an exported model on one input tensor, or on named inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if isinstance(x, torch.Tensor):
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in x.items() if k in wanted})[0]


def _max_diff(subject: ExportSubject, reference: list[np.ndarray], run_one, what: str) -> float:
    """Largest |difference| to PyTorch over all validation batches; refuses the export past ATOL."""
    diffs = [check_parity(ref, run_one(b), what) for ref, b in zip(reference, subject.batches)]
    return max(diffs)


def _correct(logits: list[np.ndarray], targets: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([(l.argmax(-1) == t.numpy())[t.numpy() != -100] for l, t in zip(logits, targets)])


def _latency_ms(fn, x: np.ndarray | torch.Tensor, repeats: int = 20) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1000


def export_run(run: Run, fmt: str = "onnx", out: Path | None = None, quantize: str | None = None) -> dict[str, Any]:
    """Write the artefact and its card (<artefact>.card.json / .card.md); returns the card."""
    from nnrecipe.deploy.predictors import PREDICTORS  # the one place where a task registers for deployment

    task = run.meta().get("task")
    if task not in PREDICTORS:
        raise UserError(f"{run.dir}: export supports {', '.join(PREDICTORS)} runs (this one: {task})")
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"--format: must be onnx or torchscript (got {fmt!r})")
    if quantize not in (None, "int8") or (quantize and fmt != "onnx"):
        raise UserError("--quantize: only int8, and only with --format onnx")
    if hasattr(PREDICTORS[task], "export"):  # tasks whose outputs are not logits export themselves
        return PREDICTORS[task].export(run, fmt, out, quantize)
    subject = PREDICTORS[task].export_subject(run)
    with torch.no_grad():
        reference = [subject.model(*subject.args(b)).numpy() for b in subject.batches]
    suffix = {"onnx": ".int8.onnx" if quantize else ".onnx", "torchscript": ".pt"}[fmt]
    out = Path(out) if out else run.dir / "export" / f"model{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {"validation_examples": sum(len(t) for t in subject.targets)}
    try:
        if fmt == "torchscript":
            scripted = torch.jit.trace(subject.model, subject.args(subject.batches[0]))
            scripted.save(str(out))
            loaded = torch.jit.load(str(out))
            with torch.no_grad():
                checks["max_abs_diff"] = _max_diff(
                    subject, reference, lambda b: loaded(*subject.args(b)).numpy(), "TorchScript"
                )
        else:
            fp32 = out if not quantize else out.with_name(out.name.replace(".int8.onnx", ".onnx"))
            _export_onnx(subject, fp32)
            single = subject.input_names == ["input"]
            checks["max_abs_diff"] = _max_diff(
                subject, reference, lambda b: onnx_outputs(fp32, b["input"] if single else b), "ONNX"
            )
            if quantize:
                checks |= _quantize(fp32, out, subject)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    card = _card(run, subject, out, fmt, quantize, checks, _correct(reference, subject.targets))
    console.print(
        f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in checks.items()),
        soft_wrap=True,
    )
    return card


def _export_onnx(subject: ExportSubject, path: Path) -> None:
    if subject.exporter == "torchscript":
        import warnings

        output = {i: d for i, d in enumerate(subject.card["output"]["shape"]) if isinstance(d, str)}
        with warnings.catch_warnings():  # its deprecation notice; it ships in torch 2.14 and Optimum still uses it
            warnings.simplefilter("ignore")
            torch.onnx.export(
                subject.model,
                subject.args({k: v[:2] for k, v in subject.batches[0].items()}),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=subject.input_names,
                output_names=["logits"],
                dynamic_axes={**subject.dynamic, "logits": output},
            )
        return
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str):
        return dims.setdefault(name, torch.export.Dim(name, min=1, max=4096))

    shapes = tuple({axis: dim(name) for axis, name in subject.dynamic[n].items()} for n in subject.input_names)
    example = subject.args({k: v[:2] for k, v in subject.batches[0].items()})
    program = torch.onnx.export(
        subject.model,
        example,
        dynamo=True,
        input_names=subject.input_names,
        output_names=["logits"],
        dynamic_shapes=shapes,
        verbose=False,
    )
    program.save(str(path))


def _quantize(fp32: Path, out: Path, subject: ExportSubject) -> dict[str, Any]:
    """Static (calibrated, QDQ) int8 for convolutional nets, dynamic int8 for linear-heavy ones
    (transformers); the accuracy, size and latency changes are measured on the validation inputs."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    feeds = [{n: b[n].numpy() for n in subject.input_names} for b in subject.batches]
    has_conv = any(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    if has_conv:
        calibration = [
            {n: v[i : i + 32] for n, v in f.items()} for f in feeds for i in range(0, len(next(iter(f.values()))), 32)
        ][:8]

        class Calibration(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(calibration)

            def get_next(self):
                return next(self.batches, None)

        quantize_static(
            str(fp32),
            str(out),
            Calibration(),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    else:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    sessions = {
        k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in (("fp32", fp32), ("int8", out))
    }
    acc = {k: float(_correct([s.run(None, f)[0] for f in feeds], subject.targets).mean()) for k, s in sessions.items()}
    first = {n: v[:64] for n, v in feeds[0].items()}
    latency = {k: _latency_ms(lambda a, s=s: s.run(None, a), first) for k, s in sessions.items()}
    return {
        "method": "static QDQ per-channel" if has_conv else "dynamic",
        "accuracy_fp32": acc["fp32"],
        "accuracy_int8": acc["int8"],
        "accuracy_change": acc["int8"] - acc["fp32"],
        "size_fp32_mb": fp32.stat().st_size / 1e6,
        "size_int8_mb": out.stat().st_size / 1e6,
        "latency_fp32_ms_b64": latency["fp32"],
        "latency_int8_ms_b64": latency["int8"],
    }


def _card(
    run: Run, subject: ExportSubject, artefact: Path, fmt: str, quantize: str | None, checks: dict, correct: np.ndarray
) -> dict[str, Any]:
    report = json.loads((run.dir / "report.json").read_text()) if (run.dir / "report.json").is_file() else {}
    keep = ("accuracy", "examples", "f1", "precision", "recall", "token_accuracy", "sentences")
    info = subject.card
    card = {
        **info,
        "format": fmt,
        "quantization": quantize,
        "checks": checks,
        "metrics": {split: {k: r[k] for k in keep if k in r} for split, r in report.items()},
        # image/text: accuracy per example; NER: per scored token
        "validation_accuracy_pytorch": float(correct.mean()),
        "source_run": str(run.dir),
        "sha256": {
            "artefact": hashlib.sha256(artefact.read_bytes()).hexdigest(),
            "weights": hashlib.sha256(run.best_checkpoint.read_bytes()).hexdigest(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    artefact.with_name(artefact.name + ".card.json").write_text(json.dumps(card, indent=2))
    md = [
        f"# Model card: {artefact.name}",
        "",
        f"- task: {card['task']}, model `{info['model']}`, format {fmt}" + (f", {quantize}" if quantize else ""),
        f"- labels: {', '.join(info['labels'])}",
        f"- input: {json.dumps(info['input'])}",
        f"- preprocessing: {json.dumps(info['preprocessing'])}",
        f"- output: logits {info['output']['shape']}",
        f"- checks: {json.dumps(checks)}",
        f"- metrics: {json.dumps(card['metrics'])}",
        f"- source run: {run.dir}",
        f"- sha256: {card['sha256']['artefact']}",
    ]
    artefact.with_name(artefact.name + ".card.md").write_text("\n".join(md) + "\n")
    return card
