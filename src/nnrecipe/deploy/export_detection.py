"""Export a detection run (TorchScript or ONNX), checked against PyTorch on validation images.

A detector returns boxes, labels and scores per image, not logits, so the parity check compares those:
the same detections in the same order, labels equal, boxes within BOX_ATOL pixels and scores within
SCORE_ATOL. The ONNX graph takes one image (3 x H x W, float in [0, 1], any size) and does the resize,
normalisation and NMS inside, as the PyTorch model does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrecipe.deploy.artefact import artefact_path, staged
from nnrecipe.deploy.card import model_card, write_card
from nnrecipe.engine.loop import console
from nnrecipe.errors import ExportMismatch, UserError
from nnrecipe.runs import Run
from nnrecipe.tasks.family import DetectionsExport, TaskFamily
from nnrecipe.tasks.serving import ort_session

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


def export_detection(
    run: Run, family: TaskFamily, subject: DetectionsExport, fmt: str, out: Path | None, quantize: str | None
) -> dict[str, Any]:
    if quantize:
        raise UserError(
            "--quantize int8: not offered for detection runs (ONNX Runtime has no int8 kernels for "
            "Faster R-CNN's RoIAlign and NMS); export fp32"
        )
    model, inputs = subject.model, subject.images
    with torch.no_grad():
        reference = [model([x])[0] for x in inputs]
    out = artefact_path(out, run.dir / "export" / ("model.onnx" if fmt == "onnx" else "model.pt"))
    with staged(out) as tmp:
        if fmt == "torchscript":
            with warnings.catch_warnings():  # TorchScript's deprecation notices; it still ships in torch 2.14
                warnings.simplefilter("ignore")
                torch.jit.script(model).save(str(tmp))
                loaded = torch.jit.load(str(tmp))
                with torch.no_grad():  # scripted detectors return (losses, detections)
                    got = [{k: v.numpy() for k, v in loaded([x])[1][0].items()} for x in inputs]
        else:
            _export_onnx(model, inputs[0], tmp)
            got = _run_onnx(tmp, inputs)
        checks = check_detections(reference, got, "TorchScript" if fmt == "torchscript" else "ONNX")
    checks["validation_images"] = len(inputs)
    facts = subject.facts | {
        "input": subject.facts["input"] | {"batch": "one image per call" if fmt == "onnx" else "a list of images"}
    }
    card = write_card(
        out,
        model_card(
            run, family, subject.labels, subject.model_name, facts, format=fmt, quantization=None, checks=checks
        ),
    )
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
    session = ort_session(path)
    rows = []
    for x in inputs:
        boxes, labels, scores = session.run(None, {"image": x.numpy()})
        rows.append({"boxes": boxes, "labels": labels, "scores": scores})
    return rows
