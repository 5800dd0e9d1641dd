"""Export: ONNX and TorchScript reproduce PyTorch on real inputs, int8 is measured, mismatches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnrecipe.deploy import export
from nnrecipe.errors import UserError
from nnrecipe.tasks import family_of


@pytest.fixture(scope="session")
def trained_run(trained_digits_run):
    return trained_digits_run


def test_onnx_export_matches_pytorch_and_writes_a_card(trained_run):
    card = export.export_run(trained_run, "onnx")
    path = trained_run.dir / "export" / "model.onnx"
    assert card["checks"]["max_abs_diff"] <= export.ATOL and card["checks"]["validation_examples"] == 144
    # dynamic batch axis: any batch size runs
    x = family_of(trained_run).export_subject(trained_run).batches[0]["input"]
    assert export.onnx_outputs(path, x[:3]).shape == (3, 10) and export.onnx_outputs(path, x[:50]).shape == (50, 10)
    saved = json.loads((trained_run.dir / "export" / "model.onnx.card.json").read_text())
    assert saved["labels"] == [str(i) for i in range(10)] and saved["preprocessing"]["mean"]
    assert len(saved["sha256"]["artefact"]) == 64 and (trained_run.dir / "export" / "model.onnx.card.md").is_file()


def test_int8_static_quantization_keeps_accuracy_and_reports_the_change(trained_run, caplog):
    card = export.export_run(trained_run, "onnx", quantize="int8")
    assert "pre-process" not in caplog.text  # ONNX Runtime's advice on the root logger, on every export
    c = card["checks"]
    assert c["method"] == "static QDQ per-channel"
    assert abs(c["accuracy_change"]) <= 0.03 and c["accuracy_int8"] > 0.9
    assert c["size_int8_mb"] < c["size_fp32_mb"] / 2


def test_torchscript_export_matches_pytorch(trained_run, recwarn):
    card = export.export_run(trained_run, "torchscript")
    assert card["checks"]["max_abs_diff"] <= export.ATOL
    assert not [str(w.message) for w in recwarn if "torch.jit" in str(w.message)]  # deprecation notices


def test_a_mismatching_export_is_refused_and_leaves_no_artefact(trained_run, tmp_path, monkeypatch):
    real = export.onnx_outputs
    monkeypatch.setattr(export, "onnx_outputs", lambda path, x: real(path, x) + np.float32(1e-2))
    with pytest.raises(export.ExportMismatch, match="differ from PyTorch by up to 0.01"):
        export.export_run(trained_run, "onnx", out=tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "good.onnx").write_bytes(b"an earlier export")  # a refused export deleted it
    (tmp_path / "good.onnx.card.json").write_text("{}")
    with pytest.raises(export.ExportMismatch):
        export.export_run(trained_run, "onnx", out=tmp_path / "good.onnx")
    assert (tmp_path / "good.onnx").read_bytes() == b"an earlier export"
    with pytest.raises(UserError, match=r"--out .*: a folder; give the artefact's file name, e.g. .*model.onnx"):
        export.export_run(trained_run, "onnx", out=tmp_path)  # IsADirectoryError before


def test_out_must_name_an_artefact_and_never_replaces_a_file_no_export_wrote(trained_run, tmp_path):
    """`--out runs/<run>/checkpoints/best.safetensors` replaced the run's weights with the ONNX graph."""
    weights = trained_run.best_checkpoint
    before = weights.read_bytes()
    with pytest.raises(UserError, match=r"best.safetensors: this artefact's name ends in .onnx, e.g. model.onnx"):
        export.export_run(trained_run, "onnx", out=weights)
    with pytest.raises(UserError, match=r"ends in .pt or .ts"):
        export.export_run(trained_run, "torchscript", out=tmp_path / "m.onnx")
    (tmp_path / "theirs.onnx").write_bytes(b"someone's model")
    with pytest.raises(UserError, match=r"theirs.onnx: a file that no export wrote .* nothing replaced"):
        export.export_run(trained_run, "onnx", out=tmp_path / "theirs.onnx")
    assert weights.read_bytes() == before and (tmp_path / "theirs.onnx").read_bytes() == b"someone's model"
    # a place that cannot be written is said before exporting (the error named a hidden temporary file)
    with pytest.raises(UserError, match=r"m.onnx: cannot write there \(.*theirs.onnx is a file\); nothing exported"):
        export.export_run(trained_run, "onnx", out=tmp_path / "theirs.onnx" / "m.onnx")
    export.export_run(trained_run, "torchscript", out=tmp_path / "m.ts")
    export.export_run(trained_run, "torchscript", out=tmp_path / "m.ts")  # its own earlier export: replaced


def test_tasks_without_a_predictor_are_refused_in_one_line(tmp_path):
    from nnrecipe.deploy.serve import load_predictor
    from nnrecipe.errors import UserError
    from nnrecipe.runs import Run

    run = Run(tmp_path)
    run.update_meta(task="rl")
    with pytest.raises(
        UserError,
        match=r"no export for .* runs \(offered for image_classification, text_classification, token_classification, detection, language_modeling\)",
    ):
        export.export_run(run, "onnx")
    with pytest.raises(UserError, match="rl: no serving for rl runs \\(offered for .*\\)"):
        load_predictor(run)
