"""What deployment needs per task: decode one input, predict a batch, describe the model, and the
model + validation batches that `nnrecipe export` checks (export_subject).

A new task family adds itself here, in PREDICTORS, and export, the server, its limits and its metrics
work for it unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from nnrecipe.data.augment import Normalizer
from nnrecipe.data.images import conform
from nnrecipe.errors import UserError
from nnrecipe.runs import Run


class Prediction(BaseModel):
    label: str
    confidence: float
    top: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class Entity(BaseModel):
    text: str
    type: str
    start: int = Field(description="Character offset of the first character in the input text.")
    end: int = Field(description="Character offset just past the last character.")


class TaggedText(BaseModel):
    text: str
    entities: list[Entity]


class EntityResponse(BaseModel):
    predictions: list[TaggedText]


class Detection(BaseModel):
    label: str
    score: float
    box: list[float] = Field(description="x1, y1, x2, y2 in the input image's pixels.")


class ImageDetections(BaseModel):
    detections: list[Detection]


class DetectionResponse(BaseModel):
    predictions: list[ImageDetections]


class InputError(ValueError):
    """One input of a request cannot be used; the message names it."""


class ImagePredictor:
    task = "image_classification"
    cpu_bf16 = False  # small CNNs are not faster under bf16 autocast on this kind of CPU (measured)

    @staticmethod
    def export_subject(run: Run):
        from nnrecipe.deploy.export import image_subject

        return image_subject(run)

    def __init__(self, run: Run, onnx_path: Path | None = None, top_k: int = 3, precision: str = "fp32"):
        from nnrecipe.tasks import image_classification as image

        self.precision = "onnx" if onnx_path is not None else precision
        self.run, self.spec, self.top_k = run, image._spec(run), top_k
        self.normalize = Normalizer(self.spec.mean, self.spec.std)
        self.onnx_path = onnx_path
        if onnx_path is not None:
            import onnxruntime as ort

            if not Path(onnx_path).is_file():
                raise UserError(f"--onnx: file not found: {onnx_path}")
            options = ort.SessionOptions()
            # No busy-waiting between calls: a spinning thread pool starves the event loop (and every
            # other process) on a small machine; measured in bench/serve_load.py.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        else:
            self.model = image.inference_model(run, self.spec, "cpu")

    def decode(self, data: bytes, index: int) -> torch.Tensor:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)
                im = im.convert("L" if self.spec.channels == 1 else "RGB")
                array = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise InputError(f"inputs[{index}]: not a decodable image ({type(e).__name__})") from None
        img = torch.from_numpy(array.copy())
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        return conform(img.unsqueeze(0), self.spec.channels, self.spec.image_size)[0]

    def decode_text(self, item: str, index: int) -> torch.Tensor:
        """JSON inputs are base64-encoded image files."""
        return self.decode(from_base64(item, index), index)

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        x = self.normalize(torch.stack(images))
        if self.onnx_path is not None:
            logits = torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0])
        else:
            with torch.no_grad(), autocast(self.precision):
                logits = self.model(x)
        probs = logits.float().softmax(1)
        classes = self.spec.classes
        out = []
        for p in probs:
            top = p.topk(min(self.top_k, len(classes)))
            out.append(
                {
                    "label": classes[int(top.indices[0])],
                    "confidence": float(top.values[0]),
                    "top": {classes[int(i)]: float(v) for v, i in zip(top.values, top.indices)},
                }
            )
        return out

    def card(self) -> dict[str, Any]:
        s = self.spec
        return model_card(
            self,
            s.classes,
            s.model,
            ("accuracy", "examples"),
            input={"kind": "image file (PNG, JPEG, ...)", "json": "base64 strings in 'inputs'", "multipart": "files"},
            preprocessing={
                "resize": [s.image_size, s.image_size],
                "channels": s.channels,
                "mean": s.mean,
                "std": s.std,
            },
        )


def model_card(predictor, labels: list[str], model: str, metrics: tuple[str, ...], **facts) -> dict[str, Any]:
    """GET /v1/model: what is served, by which backend, how inputs are read, the run's scores, provenance."""
    run = predictor.run
    report = json.loads((run.dir / "report.json").read_text()) if (run.dir / "report.json").is_file() else {}
    return {
        "task": predictor.task,
        "labels": labels,
        "model": model,
        "backend": "onnxruntime" if predictor.onnx_path else f"pytorch ({predictor.precision})",
        **facts,
        "metrics": {split: {m: r[m] for m in metrics if m in r} for split, r in report.items()},
        "source_run": str(run.dir),
        "weights_sha256": hashlib.sha256(run.best_checkpoint.read_bytes()).hexdigest(),
    }


def from_base64(item: str, index: int) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"inputs[{index}]: not valid base64") from None


class DetectionPredictor:
    """Detection: images of any size in, boxes in that image's pixels out (above model.score_threshold)."""

    task = "detection"
    response = DetectionResponse
    cpu_bf16 = False
    max_pixels = 4096 * 4096  # a larger image is refused (422) before it can exhaust a worker's memory

    @staticmethod
    def export(run: Run, fmt: str, out: Path | None, quantize: str | None) -> dict[str, Any]:
        from nnrecipe.deploy.export_detection import export_detection

        return export_detection(run, fmt, out, quantize)

    def __init__(self, run: Run, onnx_path: Path | None = None, top_k: int = 3, precision: str = "fp32"):
        from nnrecipe.tasks import detection

        self.run, self.onnx_path = run, onnx_path
        self.precision = "onnx" if onnx_path is not None else precision
        self.spec = detection._spec(run)
        if onnx_path is not None:  # the exported graph takes one image per call (see deploy/export_detection.py)
            self.session = _ort_session(onnx_path)
        else:
            self.model = detection.inference_model(run, self.spec, "cpu")
        self._detections = detection.detections

    def decode(self, data: bytes, index: int) -> torch.Tensor:
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > self.max_pixels:
                    raise InputError(
                        f"inputs[{index}]: {im.width}x{im.height} pixels; the limit is {self.max_pixels} pixels"
                    )
                im.seek(0)
                array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise InputError(f"inputs[{index}]: not a decodable image ({type(e).__name__})") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def decode_text(self, item: str, index: int) -> torch.Tensor:
        return self.decode(from_base64(item, index), index)

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        if self.onnx_path is not None:
            preds = [
                dict(
                    zip(
                        ("boxes", "labels", "scores"),
                        map(torch.from_numpy, self.session.run(None, {"image": x.numpy()})),
                    )
                )
                for x in images
            ]
        else:
            with torch.no_grad(), autocast(self.precision):
                preds = self.model(images)
        return [{"detections": self._detections(p, self.spec.classes, self.spec.score_threshold)} for p in preds]

    def card(self) -> dict[str, Any]:
        s = self.spec
        return model_card(
            self,
            s.classes,
            s.model,
            ("map", "map_50", "map_75", "images"),
            input={
                "kind": "image file (PNG, JPEG, ...), any size",
                "json": "base64 strings in 'inputs'",
                "multipart": "files",
                "max_pixels": self.max_pixels,
            },
            preprocessing={
                "resize": f"short side {s.min_size}, long side at most {s.max_size} (inside the model)",
                "boxes": "returned in the input image's pixels",
            },
            output={"detections": "label, score, box [x1, y1, x2, y2]", "score_threshold": s.score_threshold},
        )


def _ort_session(onnx_path: Path):
    import onnxruntime as ort

    if not Path(onnx_path).is_file():
        raise UserError(f"--onnx: file not found: {onnx_path}")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see ImagePredictor
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class _OrtTransformer(torch.nn.Module):
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


class TextPredictor:
    """Text classification: inputs are texts (JSON strings, or UTF-8 files in a multipart upload)."""

    task = "text_classification"
    # Not by default: alone, a MiniLM batch of 64x40 runs 2.4x faster under bf16 autocast on an AMX CPU, but
    # under serving load (small micro-batches) autocast re-casts every weight on each call and throughput
    # fell (88-90 vs 95-99 req/s, bench/serve_load.py --eager fp32 bf16).
    cpu_bf16 = False

    @staticmethod
    def export_subject(run: Run):
        from nnrecipe.deploy.export import text_subject

        return text_subject(run)

    def __init__(self, run: Run, onnx_path: Path | None = None, top_k: int = 3, precision: str = "fp32"):
        from nnrecipe.tasks import task_module

        self.run, self.top_k, self.onnx_path = run, top_k, onnx_path
        self.precision = "onnx" if onnx_path is not None else precision
        self.module = task_module(self.task)
        model, self.tokenizer, self.meta = self.module.inference_model(run)
        self.model = _OrtTransformer(_ort_session(onnx_path)) if onnx_path is not None else model
        self.labels = self.meta["labels"]

    def decode(self, data: bytes, index: int) -> str:
        try:
            return self.decode_text(data.decode("utf-8"), index)
        except UnicodeDecodeError:
            raise InputError(f"inputs[{index}]: not UTF-8 text") from None

    def decode_text(self, item: str, index: int) -> str:
        if not item.strip():
            raise InputError(f"inputs[{index}]: empty text")
        return item

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        from nnrecipe.data.text import TextLoader

        enc = self.tokenizer(texts, truncation=True, max_length=self.meta["max_length"])["input_ids"]
        with torch.no_grad(), autocast(self.precision):
            probs, _ = self.module.predict_probs(
                self.model, TextLoader(enc, [0] * len(texts), 64, self.tokenizer.pad_token_id)
            )
        out = []
        for p in probs:
            top = p.topk(min(self.top_k, len(self.labels)))
            out.append(
                {
                    "label": self.labels[int(top.indices[0])],
                    "confidence": float(top.values[0]),
                    "top": {self.labels[int(i)]: float(v) for v, i in zip(top.values, top.indices)},
                }
            )
        return out

    def card(self) -> dict[str, Any]:
        keep = ("accuracy", "examples", "f1", "precision", "recall", "token_accuracy", "sentences")
        return model_card(
            self,
            self.labels,
            self.meta["model"],
            keep,
            finetune=self.meta["finetune"],
            input={
                "kind": "text",
                "json": "strings in 'inputs'",
                "multipart": "UTF-8 text files",
                "max_tokens": self.meta["max_length"],
                "longer": "truncated",
            },
        )


class NerPredictor(TextPredictor):
    """NER: each text comes back with its entities and their character offsets."""

    task = "token_classification"
    response = EntityResponse

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        with torch.no_grad(), autocast(self.precision):
            return self.module.tag_texts(self.model, self.tokenizer, self.labels, self.meta["max_length"], texts)


PREDICTORS = {
    "image_classification": ImagePredictor,
    "text_classification": TextPredictor,
    "token_classification": NerPredictor,
    "detection": DetectionPredictor,
}


def response_model(predictor) -> type[BaseModel]:
    """The OpenAPI response schema of a predictor's task (classes, or entities)."""
    return getattr(predictor, "response", PredictResponse)


def serving_precision(precision: str, cpu_bf16: bool) -> str:
    """auto: bf16 autocast for predictors that gain from it where the CPU multiplies bf16 natively (AMX);
    none does today (see TextPredictor), so auto serves fp32."""
    from nnrecipe.engine.loop import cpu_has_bf16_units

    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision: must be auto, fp32 or bf16 (got {precision!r})")
    return ("bf16" if cpu_bf16 and cpu_has_bf16_units() else "fp32") if precision == "auto" else precision


def autocast(precision: str):
    """The eager model's numerics: bf16 autocast on the CPU, or nothing (fp32, and ONNX Runtime)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def load_predictor(run: Run, onnx_path: Path | None = None, precision: str = "auto"):
    task = run.meta().get("task")
    if task not in PREDICTORS:
        raise UserError(f"{run.dir}: serving supports {', '.join(PREDICTORS)} runs (this one: {task})")
    cls = PREDICTORS[task]
    return cls(run, onnx_path, precision=serving_precision(precision, cls.cpu_bf16))
