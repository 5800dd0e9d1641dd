"""Task families. Each module gives the CLI the same verbs: train, evaluate, predict."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

_TASKS = {
    "image_classification": "nnrecipe.tasks.image_classification",
    "text_classification": "nnrecipe.tasks.text_classification",
    "token_classification": "nnrecipe.tasks.token_classification",
    "embedding_classification": "nnrecipe.tasks.embedding_classification",
    "detection": "nnrecipe.tasks.detection",
    "rl": "nnrecipe.rl.runner",
}


def task_module(name: str) -> ModuleType:
    return import_module(_TASKS[name])
