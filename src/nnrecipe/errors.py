"""User-facing errors: anything raised as `RecipeError` or `UserError` is printed as one line, no traceback."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix (bad path, missing data, corrupt file). The CLI prints it and exits 1."""

    exit_code = 1


class RecipeError(UserError):
    """An invalid recipe or override. The CLI prints it and exits 2."""

    exit_code = 2


class ExportMismatch(UserError):
    """An exported model's outputs differ from PyTorch's; the artefact is not kept."""


# UTF-8, with a byte-order mark at the start dropped (Excel's "CSV UTF-8" and Windows Notepad write one): kept,
# it became part of the first column's name ("no column 'sentence'; columns are \ufeffsentence, ..."), the first
# API key or the first token. A mark anywhere else is text, and stays.
TEXT_ENCODING = "utf-8-sig"


def decode_line(raw: bytes, start: int) -> str:
    """A line (or record) of a text file read as bytes, `start` bytes into the file."""
    return raw.decode(TEXT_ENCODING if start == 0 else "utf-8")


def utf8_reader(read: Callable[..., T]) -> Callable[..., T]:
    """For a reader whose first argument is a text file: bytes that are not UTF-8 are a one-line error naming
    the file and the first bad byte, not a UnicodeDecodeError from somewhere inside the reader."""

    @functools.wraps(read)
    def reading(path, *args, **kwargs) -> T:
        try:
            return read(path, *args, **kwargs)
        except UnicodeDecodeError as e:
            bad = f"byte 0x{e.object[e.start]:02x}" if e.start < len(e.object) else "its end"
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at {bad}); save it as UTF-8") from None

    return reading


def first_line(e: BaseException) -> str:
    """An exception's first line for a one-line message (its class name when it says nothing)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def file_in_the_way(e: OSError) -> Path | None:
    """The file standing where a folder is needed, when that is why `e` happened (mkdir says "File exists"
    or "Not a directory" about the folder it could not make, not which file is in its way)."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
        path = Path(e.filename)
        for p in (path, *path.parents):
            if p.is_file():
                return p
    return None


def writable_file(path: Path, what: str, then: str = "") -> Path:
    """`path`, once its folder exists and a file can be made there: checked before the work whose result it
    will hold (predictions, an export, an episode were made, then lost to a place that could not be written,
    and the error named a hidden temporary file). `what` names the option; `then` ends the message."""
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        blocker = file_in_the_way(e)
        why = f"{blocker} is a file" if blocker else e.strerror or str(e)
        raise UserError(f"{what} {path}: cannot write there ({why})" + (f"; {then}" if then else "")) from None
    return path


def existing_file(path: str | Path, what: str, error: type[UserError] = UserError) -> Path:
    """`path` when it is a file; otherwise one `error` line: `<what> not found: <path>`, or that it is a
    folder (a folder was reported as not found, which sent users looking for a file that was there)."""
    return _existing(Path(path), what, error, folder=False)


def existing_folder(path: str | Path, what: str, error: type[UserError] = UserError) -> Path:
    """`path` when it is a folder; otherwise `<what> not found: <path>`, or that it is a file."""
    return _existing(Path(path), what, error, folder=True)


def free_folder(path: Path, ours: Callable[[Path], bool] = lambda p: False) -> bool:
    """Whether a verb may write its output folder at `path`: it does not exist, is empty, or `ours` says an
    earlier run of the same verb wrote it. A folder holding other files is someone else's (a run's report,
    the current folder, a class folder of a tree)."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and (not any(path.iterdir()) or ours(path)))


def existing_data_files(data, fields: tuple[str, ...] = ("train", "val", "test"), folders: bool = False) -> None:
    """Each file a data section names (`folders`: or folder) exists, or one line naming its field: it was
    "data file not found: data/conll2003/valid.txt", and which field held that path was left to find."""
    for field in fields:
        path = getattr(data, field, None)
        if path is None:
            continue
        if not folders:
            existing_file(path, f"data.{field}: file")
        elif not Path(path).exists():
            raise UserError(f"data.{field}: not found: {path}")


def _existing(path: Path, what: str, error: type[UserError], folder: bool) -> Path:
    if path.is_file() if folder else path.is_dir():
        raise error(f"{what} is a {'file, not a folder' if folder else 'folder, not a file'}: {path}")
    if not (path.is_dir() if folder else path.is_file()):
        raise error(f"{what} not found: {path}")
    return path


@utf8_reader
def read_utf8(path: Path) -> str:
    """A user's text file (a recipe, a key file, a label list) as text; not UTF-8 is a one-line error."""
    return Path(path).read_text(encoding=TEXT_ENCODING)


def read_yaml_mapping(path: Path, not_mapping: str, error: type[UserError] = UserError) -> dict:
    """A user's YAML file that must hold a mapping ({} when empty): bad YAML, a key given twice in one mapping,
    or YAML of another shape (then `not_mapping` says what was expected), is one `error` line naming the file."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        """PyYAML keeps the last of two equal keys without a word: a second `train:` section replaced the
        first. Checked before merge keys (`<<: *base`) are expanded, whose overrides are meant."""

        def construct_mapping(self, node, deep=False):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in lines:
                    raise error(f"{path}: {key!r} given twice in one mapping (lines {lines[key]} and "
                                f"{key_node.start_mark.line + 1}); YAML would keep only the last")  # fmt: skip
                lines[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    try:
        raw = yaml.load(read_utf8(path), UniqueKeys) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: {not_mapping}")
    return raw
