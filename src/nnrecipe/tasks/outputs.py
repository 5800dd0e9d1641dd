"""What `predict` and the server return, one schema per kind of output, defined once.

Classification (image, text, embeddings): `label`, `confidence` and `top` (the k most likely labels with
their probabilities). Entities (NER): each text with its entities and their character offsets.
Detections: boxes in the input image's pixels with labels and scores. Generation (language models): each
prompt with its continuation. A family names its kind with
`output = CLASSIFICATION` (or ENTITIES, DETECTIONS); the CLI prints rows and the server documents its
responses from that alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    confidence: float
    top: dict[str, float] = Field(description="The k most likely labels and their probabilities.")


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


class Generated(BaseModel):
    prompt: str
    text: str = Field(description="The prompt's continuation (without the prompt).")
    new_tokens: int
    tokens_per_s: float | None = Field(None, description="/v1/generate: how fast the tokens came.")


class GenerationResponse(BaseModel):
    predictions: list[Generated]


@dataclass(frozen=True)
class Output:
    """A kind of prediction: its HTTP response schema and how the CLI prints one row."""

    name: str
    response: type[BaseModel]
    line: Callable[[dict[str, Any]], str]


# A printed line shows this much of a text input: a 200,000-character text was echoed in full before its
# label (--json keeps every character).
SHOWN_CHARS = 80


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 1]}… ({len(text):,} characters)"


def _source(row: dict[str, Any]) -> str:
    return str(row["file"]) if "file" in row else _shown(str(row.get("text", "")))


def _class_line(row: dict[str, Any]) -> str:
    top = "  ".join(f"{k} {v:.3f}" for k, v in row["top"].items())
    return f"{_source(row)}: {row['label']} ({row['confidence']:.3f})   top: {top}"


def _entity_line(row: dict[str, Any]) -> str:
    found = "  ".join(f"[{e['text']}]{e['type']}@{e['start']}-{e['end']}" for e in row["entities"])
    return f"{_shown(row['text'])}: {found or '(no entities)'}"


def _detection_line(row: dict[str, Any]) -> str:
    found = "  ".join(
        f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]" for d in row["detections"]
    )
    return f"{_source(row)}: {found or '(nothing above model.score_threshold)'}"


def _generation_line(row: dict[str, Any]) -> str:
    return row["prompt"] + row["text"]


CLASSIFICATION = Output("classification", PredictResponse, _class_line)
GENERATION = Output("generation", GenerationResponse, _generation_line)
ENTITIES = Output("entities", EntityResponse, _entity_line)
DETECTIONS = Output("detections", DetectionResponse, _detection_line)


def top_k(probs, labels: list[str], k: int = 3) -> dict[str, Any]:
    """One classification row from a probability vector (a 1-D tensor): label, confidence, top-k."""
    top = probs.float().topk(min(k, len(labels)))
    pairs = [(labels[int(i)], float(v)) for v, i in zip(top.values, top.indices)]
    return {"label": pairs[0][0], "confidence": pairs[0][1], "top": dict(pairs)}
