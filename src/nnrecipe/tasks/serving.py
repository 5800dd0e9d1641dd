"""What every family's serving predictor shares: reading request inputs safely, ONNX Runtime sessions, and
the numerics of the eager model. A family's `predictor()` returns a `Predictor`; deploy/serve.py does the
HTTP side (auth, limits, micro-batching, metrics) for all of them.
"""

from __future__ import annotations

import base64
import binascii
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nnrecipe.data.pixels import pixels
from nnrecipe.errors import TEXT_ENCODING, UserError, existing_file, first_line

# An image larger than this (width x height, read from the file's header) is refused (422) before it is decoded:
# 10 megapixels takes a 4K video frame and most cameras' photos; `nnrecipe serve --max-image-pixels` changes it.
MAX_PIXELS = 10_000_000
PRECISIONS = ("auto", "fp32", "bf16")


class InputError(ValueError):
    """One input of a request cannot be used; the message names it."""


class Predictor(ABC):
    """A served model. `decode` reads one uploaded file, `decode_text` one JSON string; `predict` runs a
    micro-batch of decoded inputs; `facts` describes inputs and outputs for the model card."""

    labels: list[str]
    model_name: str
    onnx_path: Path | None = None
    precision: str = "fp32"
    max_pixels: int = MAX_PIXELS  # image inputs: the most pixels one may have (the server sets it)

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx_path is not None else f"pytorch ({self.precision})"

    @abstractmethod
    def decode(self, data: bytes, index: int) -> Any:
        """One uploaded file -> a model input, or InputError naming inputs[index]."""

    @abstractmethod
    def decode_text(self, item: str, index: int) -> Any:
        """One JSON string -> a model input, or InputError naming inputs[index]."""

    @abstractmethod
    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        """A micro-batch of decoded inputs -> one row each, in the family's output schema."""

    def facts(self) -> dict[str, Any]:
        return {}

    def sample_file(self) -> bytes | None:
        """A file `decode` takes, to try an --onnx model on before serving; None: not tried."""
        return None


class ImageInputs:
    """Inputs are image files: multipart uploads, or base64 strings in JSON."""

    def decode_text(self, item: str, index: int):
        return self.decode(from_base64(item, index), index)

    def sample_file(self) -> bytes:
        """A file this kind of predictor takes (a black 8x8 PNG), to try a model file on before serving."""
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, format="PNG")
        return out.getvalue()


class TextInputs:
    """Inputs are texts: JSON strings, or UTF-8 files in a multipart upload."""

    def decode(self, data: bytes, index: int) -> str:
        try:
            return self.decode_text(data.decode(TEXT_ENCODING), index)
        except UnicodeDecodeError:
            raise InputError(f"inputs[{index}]: not UTF-8 text") from None

    def decode_text(self, item: str, index: int) -> str:
        if not item.strip():
            raise InputError(f"inputs[{index}]: empty text")
        return item

    def sample_file(self) -> bytes:
        """A file this kind of predictor takes (one word), to try a model file on before serving."""
        return b"a"


def from_base64(item: str, index: int) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"inputs[{index}]: not valid base64") from None


def decode_image(data: bytes, index: int, mode: str = "RGB", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """uint8 C x H x W from an image file's bytes (its first frame), in PIL `mode` ("L" or "RGB"); the
    pixel count is checked from the header, before anything is decoded. Whatever a broken or hostile file
    makes a decoder raise is that input's 422, never the server's 500."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise InputError(f"inputs[{index}]: {im.width}x{im.height} pixels; the limit is {max_pixels} pixels")
            im.seek(0)
            array = pixels(im, mode)
    except InputError:
        raise
    except Image.DecompressionBombError:  # Image.open refuses it from the header: far above any limit
        raise InputError(
            f"inputs[{index}]: over {Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels} pixels"
        ) from None
    except Exception as e:  # PIL's plugins raise OSError, ValueError, SyntaxError, struct.error, IndexError...
        raise InputError(f"inputs[{index}]: not a decodable image ({type(e).__name__})") from None
    img = torch.from_numpy(array.copy())
    return img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)


def ort_session(onnx_path: Path):
    """An ONNX Runtime CPU session that does not busy-wait between calls: a spinning thread pool starves
    the event loop (and every other process) on a small machine (measured in bench/serve_load.py)."""
    import onnxruntime as ort

    existing_file(onnx_path, "--onnx: model file")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own exception classes (InvalidProtobuf, Fail, ...)
        first = first_line(e)
        raise UserError(f"--onnx {onnx_path}: ONNX Runtime cannot load it ({first})") from None


def serving_precision(precision: str) -> str:
    """auto serves fp32: bf16 autocast was measured slower under serving load on an AMX CPU (MiniLM 88-90 vs
    95-99 req/s, small micro-batches re-cast every weight on each call; bench/serve_load.py --eager fp32 bf16)
    and small CNNs are not faster under it either. bf16 stays available on request."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision: must be auto, fp32 or bf16 (got {precision!r})")
    return "fp32" if precision == "auto" else precision


def autocast(precision: str):
    """The eager model's numerics: bf16 autocast on the CPU, or nothing (fp32, and ONNX Runtime)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
