"""Which optional extra brings a missing import, so that it is a one-line error naming the `pip install`
that fixes it instead of a traceback. The extras themselves are read from the installed package's metadata
(pyproject.toml's optional-dependencies): one list to keep, not two."""

from __future__ import annotations

import re
from importlib import metadata

from nnrecipe.errors import UserError

# Import names whose distribution is not the same name with "_" for "-".
DISTRIBUTION_OF = {
    "cv2": "opencv-python-headless",
    "Box2D": "box2d",
    "pygame": "pygame-ce",
    "mlflow": "mlflow-skinny",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "yaml": "PyYAML",
}
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)[^;]*;.*extra\s*==\s*[\"']([^\"']+)[\"']")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_for(module: str) -> str | None:
    """The first extra of nnrecipe's metadata that installs `module`'s distribution (`all` aside)."""
    wanted = canonical(DISTRIBUTION_OF.get(module, module))
    try:
        requirements = metadata.requires("nnrecipe") or []
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return None
    for requirement in requirements:
        found = REQUIREMENT.match(requirement)
        if found and canonical(found[1]) == wanted and found[2] != "all":
            return found[2]
    return None


def missing_extra(error: ModuleNotFoundError) -> UserError | None:
    """The one-line error for an import an extra would have brought; None for any other missing module
    (a bug, shown as one)."""
    top = (error.name or "").split(".")[0]
    extra = extra_for(top)
    if extra is None:
        return None
    return UserError(f"this needs {top}, from the '{extra}' extra: pip install 'nnrecipe[{extra}]'")
