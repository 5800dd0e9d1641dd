"""The suite cleans up after itself: a CI machine ran out of disk with the default tmp_path retention."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_passing_tests_tmp_path_is_deleted_and_a_failing_ones_is_kept(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "def test_passes(tmp_path):\n"
        "    (tmp_path / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "    print('PATH', tmp_path)\n\n"
        "def test_fails(tmp_path):\n"
        "    (tmp_path / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "    print('PATH', tmp_path)\n"
        "    assert False\n"
    )
    options = ["-s", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-c", str(ROOT / "pyproject.toml")]
    options += ["--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_sample.py")]
    out = subprocess.run([sys.executable, "-m", "pytest", *options], capture_output=True, text=True, cwd=tmp_path)
    paths = [Path(line.split("PATH ", 1)[1].strip()) for line in out.stdout.splitlines() if "PATH " in line]
    assert len(paths) == 2, out.stdout + out.stderr
    passed, failed = paths
    assert "1 failed, 1 passed" in out.stdout
    assert not passed.exists()
    assert (failed / "weights.bin").exists()
