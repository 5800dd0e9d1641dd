"""`nnrecipe export`: a run's best weights as ONNX or TorchScript, checked against PyTorch on validation
inputs before it is kept, optionally int8, with a model card. The family supplies what is exported
(`export_subject`): a logits graph (checked here) or a detector (deploy/export_detection.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrecipe.deploy.artefact import artefact_path, staged
from nnrecipe.deploy.card import model_card, write_card
from nnrecipe.deploy.export_detection import export_detection
from nnrecipe.engine.loop import console
from nnrecipe.errors import ExportMismatch, UserError
from nnrecipe.runs import Run
from nnrecipe.tasks.family import DetectionsExport, LogitsExport, TaskFamily, family_of

__all__ = ["ATOL", "ExportMismatch", "check_parity", "export_run", "onnx_outputs"]
from nnrecipe.tasks.serving import ort_session

ATOL = 1e-4  # float32 logits: PyTorch vs ONNX Runtime kernels differ by rounding only


def check_parity(reference: np.ndarray, candidate: np.ndarray, what: str, atol: float = ATOL) -> float:
    diff = float(np.abs(reference - candidate).max())
    if not np.isfinite(diff) or diff > atol:
        raise ExportMismatch(
            f"{what}: outputs differ from PyTorch by up to {diff:.3g} (tolerance {atol:g}); export refused"
        )
    return diff


def onnx_outputs(path: Path, x: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray:
    """Run an exported model on one input tensor, or on named inputs."""
    session = ort_session(path)
    if isinstance(x, torch.Tensor):
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in x.items() if k in wanted})[0]


def _max_diff(subject: LogitsExport, reference: list[np.ndarray], run_one, what: str) -> float:
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
    family = family_of(run).require("export")
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"--format: must be onnx or torchscript (got {fmt!r})")
    if quantize not in (None, "int8") or (quantize and fmt != "onnx"):
        raise UserError("--quantize: only int8, and only with --format onnx")
    subject = family.export_subject(run)
    if isinstance(subject, DetectionsExport):  # boxes, labels and scores rather than logits
        return export_detection(run, family, subject, fmt, out, quantize)
    return _export_logits(run, family, subject, fmt, out, quantize)


def _export_logits(
    run: Run, family: TaskFamily, subject: LogitsExport, fmt: str, out: Path | None, quantize: str | None
) -> dict[str, Any]:
    with torch.no_grad():
        reference = [subject.model(*subject.args(b)).numpy() for b in subject.batches]
    suffix = {"onnx": ".int8.onnx" if quantize else ".onnx", "torchscript": ".pt"}[fmt]
    out = artefact_path(out, run.dir / "export" / f"model{suffix}")
    checks: dict[str, Any] = {"validation_examples": sum(len(t) for t in subject.targets)}
    if fmt == "torchscript":
        with staged(out) as tmp, quiet():  # the parity check below is what tells whether the trace holds
            torch.jit.trace(subject.model, subject.args(subject.batches[0])).save(str(tmp))
            loaded = torch.jit.load(str(tmp))
            with torch.no_grad():
                checks["max_abs_diff"] = _max_diff(
                    subject, reference, lambda b: loaded(*subject.args(b)).numpy(), "TorchScript"
                )
    else:
        fp32 = out if not quantize else out.with_name(out.name.replace(".int8.onnx", ".onnx"))
        single = subject.input_names == ["input"]
        with staged(fp32) as tmp:
            _export_onnx(subject, tmp)
            checks["max_abs_diff"] = _max_diff(
                subject, reference, lambda b: onnx_outputs(tmp, b["input"] if single else b), "ONNX"
            )
        if quantize:
            with staged(out) as tmp, quiet():
                checks |= _quantize(fp32, tmp, subject)
    card = model_card(
        run,
        family,
        subject.labels,
        subject.model_name,
        subject.facts,
        format=fmt,
        quantization=quantize,
        checks=checks,
        # image/text: accuracy per example; NER: per scored token
        validation_accuracy_pytorch=float(_correct(reference, subject.targets).mean()),
    )
    card = write_card(out, card)
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in checks.items())
    console.print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); {shown}", soft_wrap=True)
    return card


@contextmanager
def quiet() -> Iterator[None]:
    """Without the notices tracing and quantising print on every export: TorchScript's deprecation
    (torch 2.14 still ships it), the tracer's "might not generalize" (the parity check measures that), and
    ONNX Runtime's root-logger advice to pre-process (its shape inference; the accuracy change is measured)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _export_onnx(subject: LogitsExport, path: Path) -> None:
    if subject.exporter == "torchscript":
        output = {i: d for i, d in enumerate(subject.facts["output"]["shape"]) if isinstance(d, str)}
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


def _quantize(fp32: Path, out: Path, subject: LogitsExport) -> dict[str, Any]:
    """Static (calibrated, QDQ) int8 for convolutional nets, dynamic int8 for linear-heavy ones
    (transformers); the accuracy, size and latency changes are measured on the validation inputs."""
    import onnx
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
        k: ort_session(p)
        for k, p in (("fp32", fp32), ("int8", out))  # configured as they are served
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
