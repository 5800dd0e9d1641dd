"""An installable package: the wheel carries the bundled recipes, and an installed nnrecipe lists and trains
them from any folder; a missing extra is one line naming the pip install."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy of what the wheel is made of (setuptools writes build/ beside the sources), without
    # build isolation: this environment's setuptools builds it, offline.
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("nnrecipe-*.whl")
    return path


def test_the_wheel_carries_the_recipes_and_their_maps(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    recipes = {Path(n).name for n in names if n.startswith("nnrecipe/recipes/") and n.endswith(".yaml")}
    assert recipes == {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert "nnrecipe/recipes/maps/maze.txt" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


@pytest.mark.slow
def test_an_installed_wheel_lists_and_trains_a_bundled_recipe_outside_the_checkout(wheel, tmp_path):
    """A fresh virtual environment outside the checkout, with the wheel installed (not the source tree):
    its dependencies come from this environment's site-packages through a .pth file, which adds the folder
    without running its .pth files, so the checkout's editable install does not leak in."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}

    def nnrecipe(*args):
        return subprocess.run(
            [venv / "bin" / "nnrecipe", *args], capture_output=True, text=True, cwd=work, env=env, timeout=300
        )

    where = subprocess.run(
        [python, "-c", "import nnrecipe; print(nnrecipe.__file__)"], capture_output=True, text=True, cwd=work, env=env
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the installed copy, not the checkout
    res = nnrecipe("recipes")
    assert res.returncode == 0 and any(line.startswith("digits-convnet ") for line in res.stdout.splitlines())
    res = nnrecipe("train", "digits-convnet", "--set", "train.epochs=1", "--set", "track.tensorboard=false")
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = (work / "runs").iterdir()
    assert (run / "report.json").is_file() and (run / "checkpoints" / "best.safetensors").is_file()


def test_a_missing_extra_is_one_line_naming_the_pip_install(tmp_path):
    """gymnasium hidden from the interpreter (None in sys.modules): `rl train` says which extra to install."""
    code = (
        "import sys; sys.modules['gymnasium'] = None; sys.argv = ['nnrecipe', 'rl', 'train', "
        f"{str(ROOT / 'recipes/cartpole-dqn.yaml')!r}]; from nnrecipe.cli import main; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "pip install 'nnrecipe[rl]'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
