"""Export a detection run (TorchScript or ONNX), checked against PyTorch on validation images.

A detector returns boxes, labels and scores per image, not logits, so the parity check compares those:
the same detections in the same order, labels equal, boxes within BOX_ATOL pixels and scores within
SCORE_ATOL. The ONNX graph takes one image (3 x H x W, float in [0, 1], any size) and does the resize,
normalisation and NMS inside, as the PyTorch model does.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrecipe.deploy.export import ExportMismatch
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.runs import Run

BOX_ATOL, SCORE_ATOL = 1e-2, 1e-4  # pixels; probability


def check_detections(
    reference: list[dict[str, torch.Tensor]], candidate: list[dict[str, np.ndarray]], what: str
) -> dict[str, float]:
    """Refuse the export unless every image's detections agree with PyTorch's."""
    box_diff = score_diff = 0.0
    for i, (ref, got) in enumerate(zip(reference, candidate)):
        n_ref, n_got = len(ref["scores"]), len(got["scores"])
        if n_ref != n_got or not np.array_equal(ref["labels"].numpy(), np.asarray(got["labels"])):
            raise ExportMismatch(
                f"{what}: validation image {i}: {n_got} detections with labels {np.asarray(got['labels'])[:5].tolist()}..., "
                f"PyTorch has {n_ref} with {ref['labels'][:5].tolist()}...; export refused"
            )
        if n_ref:
            box_diff = max(box_diff, float(np.abs(ref["boxes"].numpy() - np.asarray(got["boxes"])).max()))
            score_diff = max(score_diff, float(np.abs(ref["scores"].numpy() - np.asarray(got["scores"])).max()))
    if box_diff > BOX_ATOL or score_diff > SCORE_ATOL:
        raise ExportMismatch(
            f"{what}: boxes differ from PyTorch by up to {box_diff:.3g} px (tolerance {BOX_ATOL:g}), scores by "
            f"{score_diff:.3g} (tolerance {SCORE_ATOL:g}); export refused"
        )
    return {"max_box_diff_px": box_diff, "max_score_diff": score_diff}


def export_detection(run: Run, fmt: str, out: Path | None, quantize: str | None, images: int = 8) -> dict[str, Any]:
    from nnrecipe.tasks import detection

    if quantize:
        raise UserError(
            "--quantize int8: not offered for detection runs (ONNX Runtime has no int8 kernels for "
            "Faster R-CNN's RoIAlign and NMS); export fp32"
        )
    spec = detection._spec(run)
    model = detection.inference_model(run, spec, "cpu")
    splits = detection.load_splits(run.recipe())
    part = splits.val or splits.test or splits.train
    inputs = [detection.read_rgb(item.path) for item in part[:images]]
    with torch.no_grad():
        reference = [model([x])[0] for x in inputs]
    out = Path(out) if out else run.dir / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():  # TorchScript's deprecation notices; it still ships in torch 2.14
                warnings.simplefilter("ignore")
                torch.jit.script(model).save(str(out))
                loaded = torch.jit.load(str(out))
                with torch.no_grad():  # scripted detectors return (losses, detections)
                    got = [{k: v.numpy() for k, v in loaded([x])[1][0].items()} for x in inputs]
        else:
            _export_onnx(model, inputs[0], out)
            got = _run_onnx(out, inputs)
        checks = check_detections(reference, got, "TorchScript" if fmt == "torchscript" else "ONNX")
    except Exception:
        out.unlink(missing_ok=True)
        raise
    checks["validation_images"] = len(inputs)
    card = _card(run, spec, out, fmt, checks)
    console.print(
        f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); boxes within {checks['max_box_diff_px']:.2g} px and "
        f"scores within {checks['max_score_diff']:.2g} of PyTorch on {len(inputs)} validation images",
        soft_wrap=True,
    )
    return card


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torchvision's detection models export through the TorchScript-based exporter (their data-dependent
    control flow is scripted), one image per call with free height and width."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            ([example],),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "detections"},
                "labels": {0: "detections"},
                "scores": {0: "detections"},
            },
        )


def _run_onnx(path: Path, inputs: list[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = []
    for x in inputs:
        boxes, labels, scores = session.run(None, {"image": x.numpy()})
        rows.append({"boxes": boxes, "labels": labels, "scores": scores})
    return rows


def _card(run: Run, spec, artefact: Path, fmt: str, checks: dict) -> dict[str, Any]:
    report = json.loads((run.dir / "report.json").read_text()) if (run.dir / "report.json").is_file() else {}
    card = {
        "task": "detection",
        "labels": spec.classes,
        "model": spec.model,
        "format": fmt,
        "quantization": None,
        "input": {
            "name": "image",
            "shape": [3, "height", "width"],
            "dtype": "float32",
            "range": "pixel / 255, RGB",
            "batch": "one image per call" if fmt == "onnx" else "a list of images",
        },
        "preprocessing": {
            "resize": f"inside the model: short side {spec.min_size}, long side at most {spec.max_size}",
            "normalisation": "inside the model (ImageNet mean/std)",
        },
        "output": {
            "boxes": ["detections", 4],
            "labels": ["detections"],
            "scores": ["detections"],
            "labels_index": "1-based into labels (0 is the background)",
            "suggested_score_threshold": spec.score_threshold,
        },
        "checks": checks,
        "metrics": {k: {m: v.get(m) for m in ("map", "map_50", "map_75", "images")} for k, v in report.items()},
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
        f"- task: detection, model `{spec.model}`, format {fmt}",
        f"- labels: {', '.join(spec.classes)}",
        f"- input: {json.dumps(card['input'])}",
        f"- preprocessing: {json.dumps(card['preprocessing'])}",
        f"- output: {json.dumps(card['output'])}",
        f"- checks: {json.dumps(checks)}",
        f"- metrics: {json.dumps(card['metrics'])}",
        f"- source run: {run.dir}",
        f"- sha256: {card['sha256']['artefact']}",
    ]
    artefact.with_name(artefact.name + ".card.md").write_text("\n".join(md) + "\n")
    return card
