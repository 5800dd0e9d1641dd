"""Replacing what a verb wrote before only once the new one is complete: an export goes to a temporary file
beside its path until every parity check passed (a refused export deleted the earlier artefact), and a
re-pruned run's folder is moved aside, then put back if the new one fails (it was deleted first)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nnrecipe.errors import UserError, writable_file


def artefact_path(out: Path | None, default: Path) -> Path:
    """--out, or the run's default. Refused: a folder (it ended in IsADirectoryError), a name without the
    format's extension, and a file an earlier export did not write (`--out runs/<run>/checkpoints/
    best.safetensors` replaced the run's weights with the ONNX graph)."""
    path = Path(out) if out else default
    if path.is_dir():
        raise UserError(f"--out {path}: a folder; give the artefact's file name, e.g. {path / default.name}")
    endings = (".onnx",) if default.suffix == ".onnx" else (".pt", ".ts")
    if path.suffix not in endings:
        raise UserError(f"--out {path}: this artefact's name ends in {' or '.join(endings)}, e.g. {default.name}")
    if path.exists() and not path.with_name(path.name + ".card.json").exists():
        raise UserError(f"--out {path}: a file that no export wrote (no {path.name}.card.json beside it); "
                        "nothing replaced: remove it or give another name")  # fmt: skip
    return writable_file(path, "--out", "nothing exported")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary path beside `out` that becomes `out` when the block ends without an error."""
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing(folder: Path) -> Iterator[None]:
    """An existing `folder` moved aside while the block makes its replacement: put back when the block fails
    (a re-prune that failed had already deleted the previous result), removed when it succeeds."""
    aside = folder.with_name(f".{folder.name}.previous-{os.getpid()}")
    moved = folder.exists()
    if moved:
        folder.rename(aside)
    try:
        yield
    except BaseException:
        if moved:
            shutil.rmtree(folder, ignore_errors=True)
            aside.rename(folder)
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
