"""Export a trained run to ONNX (optionally int8) or TorchScript, checked against PyTorch on real
validation inputs, with a model card beside every artefact.

An export that does not reproduce the PyTorch outputs within tolerance fails and leaves no artefact:
a silently wrong model is worse than none.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrecipe.data.images import load_splits
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.runs import Run
from nnrecipe.tasks import image_classification as image

ATOL = 1e-4  # float32 logits: PyTorch vs ONNX Runtime kernels differ by rounding only


class ExportMismatch(UserError):
    """The exported model's outputs differ from PyTorch's."""


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


def check_parity(reference: np.ndarray, candidate: np.ndarray, what: str, atol: float = ATOL) -> float:
    diff = float(np.abs(reference - candidate).max())
    if not np.isfinite(diff) or diff > atol:
        raise ExportMismatch(f"{what}: outputs differ from PyTorch by up to {diff:.3g} (tolerance {atol:g}); export refused")
    return diff


def onnx_outputs(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _latency_ms(fn, x: np.ndarray | torch.Tensor, repeats: int = 20) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1000


def export_run(run: Run, fmt: str = "onnx", out: Path | None = None, quantize: str | None = None) -> dict[str, Any]:
    """Write the artefact and its card (<artefact>.card.json / .card.md); returns the card."""
    if run.meta().get("task") != "image_classification":
        raise UserError(f"{run.dir}: export supports image classification runs so far")
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"--format: must be onnx or torchscript (got {fmt!r})")
    if quantize not in (None, "int8") or (quantize and fmt != "onnx"):
        raise UserError("--quantize: only int8, and only with --format onnx")
    spec = image._spec(run)
    model = image.inference_model(run, spec, "cpu")
    x, y = validation_inputs(run)
    with torch.no_grad():
        reference = model(x).numpy()
    suffix = {"onnx": ".int8.onnx" if quantize else ".onnx", "torchscript": ".pt"}[fmt]
    out = Path(out) if out else run.dir / "export" / f"model{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {"validation_examples": len(y)}
    try:
        if fmt == "torchscript":
            scripted = torch.jit.trace(model, x[:2])
            scripted.save(str(out))
            with torch.no_grad():
                checks["max_abs_diff"] = check_parity(reference, torch.jit.load(str(out))(x).numpy(), "TorchScript")
        else:
            fp32 = out if not quantize else out.with_name(out.name.replace(".int8.onnx", ".onnx"))
            _export_onnx(model, x, fp32)
            checks["max_abs_diff"] = check_parity(reference, onnx_outputs(fp32, x), "ONNX")
            if quantize:
                checks |= _quantize(fp32, out, x, y, reference)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    card = _card(run, spec, out, fmt, quantize, checks, reference.argmax(1) == y.numpy())
    console.print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); "
                  + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in checks.items()), soft_wrap=True)
    return card


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (x[:2],), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))


def _quantize(fp32: Path, out: Path, x: torch.Tensor, y: torch.Tensor, reference: np.ndarray) -> dict[str, Any]:
    """Static (calibrated, QDQ) int8 for convolutional nets, dynamic int8 for linear-only ones; the
    accuracy, size and latency changes are measured on the validation inputs."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    has_conv = any(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    if has_conv:
        class Calibration(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"input": b.numpy()} for b in x[:256].split(32)])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(str(fp32), str(out), Calibration(), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in (("fp32", fp32), ("int8", out))}
    preds = {k: s.run(None, {"input": x.numpy()})[0].argmax(1) for k, s in sessions.items()}
    acc = {k: float((p == y.numpy()).mean()) for k, p in preds.items()}
    batch = x[:64].numpy()
    latency = {k: _latency_ms(lambda a, s=s: s.run(None, {"input": a}), batch) for k, s in sessions.items()}
    return {"method": "static QDQ per-channel" if has_conv else "dynamic", "accuracy_fp32": acc["fp32"], "accuracy_int8": acc["int8"],
            "accuracy_change": acc["int8"] - acc["fp32"], "size_fp32_mb": fp32.stat().st_size / 1e6,
            "size_int8_mb": out.stat().st_size / 1e6, "latency_fp32_ms_b64": latency["fp32"], "latency_int8_ms_b64": latency["int8"]}


def _card(run: Run, spec, artefact: Path, fmt: str, quantize: str | None, checks: dict, correct: np.ndarray) -> dict[str, Any]:
    report = json.loads((run.dir / "report.json").read_text()) if (run.dir / "report.json").is_file() else {}
    card = {
        "task": "image_classification",
        "labels": spec.classes,
        "input": {"name": "input", "shape": ["batch", spec.channels, spec.image_size, spec.image_size], "dtype": "float32"},
        "preprocessing": {"resize": [spec.image_size, spec.image_size], "channels": spec.channels, "scale": "pixel / 255",
                          "mean": spec.mean, "std": spec.std, "formula": "(pixel / 255 - mean) / std per channel"},
        "output": {"name": "logits", "shape": ["batch", len(spec.classes)], "softmax": "apply for probabilities"},
        "format": fmt, "quantization": quantize, "checks": checks,
        "metrics": {split: {"accuracy": r.get("accuracy"), "examples": r.get("examples")} for split, r in report.items()},
        "validation_accuracy_pytorch": float(correct.mean()),
        "source_run": str(run.dir), "model": spec.model,
        "sha256": {"artefact": hashlib.sha256(artefact.read_bytes()).hexdigest(),
                   "weights": hashlib.sha256(run.best_checkpoint.read_bytes()).hexdigest()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    artefact.with_name(artefact.name + ".card.json").write_text(json.dumps(card, indent=2))
    md = [f"# Model card: {artefact.name}", "", f"- task: {card['task']}, model `{spec.model}`, format {fmt}"
          + (f", {quantize}" if quantize else ""), f"- labels: {', '.join(spec.classes)}",
          f"- input: float32 {card['input']['shape']}; preprocessing: resize to {spec.image_size}x{spec.image_size}, "
          f"{spec.channels} channel(s), (pixel/255 - mean)/std with mean {spec.mean} std {spec.std}",
          f"- output: logits {card['output']['shape']}", f"- checks: {json.dumps(checks)}",
          f"- metrics: {json.dumps(card['metrics'])}", f"- source run: {run.dir}", f"- sha256: {card['sha256']['artefact']}"]
    artefact.with_name(artefact.name + ".card.md").write_text("\n".join(md) + "\n")
    return card
