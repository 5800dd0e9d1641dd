"""Calibration in every classification report: ECE, maximum calibration error and Brier score against a
hand computation, and the report and reliability diagram of a real run."""

from __future__ import annotations

import pytest
import torch

from nnrecipe.reporting.calibration import calibration_summary
from nnrecipe.tasks import get_family


def test_ece_mce_and_brier_equal_a_hand_computation():
    # Two predictions at confidence 0.9 (one right: bin accuracy 0.5) and two at 0.6 (both right: 1.0).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1, 0])
    c = calibration_summary(probs, labels)
    assert c["ece"] == pytest.approx(0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.6 - 1.0))
    assert c["mce"] == pytest.approx(0.4)
    brier = ((0.1**2 + 0.1**2) + (0.9**2 + 0.9**2) + (0.4**2 + 0.4**2) + (0.4**2 + 0.4**2)) / 4
    assert c["brier"] == pytest.approx(brier)
    assert [(r["count"], round(r["accuracy"], 3)) for r in c["reliability"]] == [(2, 1.0), (2, 0.5)]


def test_ece_and_mce_equal_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(1)
    probs = (3 * torch.randn(2000, 5, generator=g)).softmax(1)
    labels = torch.randint(0, 5, (2000,), generator=g)
    c = calibration_summary(probs, labels)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        assert c[key] == pytest.approx(
            multiclass_calibration_error(probs, labels, 5, n_bins=15, norm=norm).item(), abs=1e-6
        )


def test_an_over_confident_model_has_the_larger_error():
    """Labels drawn from the model's own probabilities make it calibrated; sharpening them (logits x 4) does not."""
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(4000, 3, generator=g)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()
    honest, sharp = (calibration_summary((logits * t).softmax(1), labels) for t in (1.0, 4.0))
    assert honest["ece"] < 0.03 and sharp["ece"] > 3 * honest["ece"] and sharp["brier"] > honest["brier"]


def test_image_reports_carry_calibration_and_a_reliability_diagram(recipe_factory, new_run):
    recipe = recipe_factory("train.epochs=1", "track.plots=true")
    run = new_run(recipe)
    summary = get_family("image_classification").train(recipe, run)
    assert 0 <= summary["calibration"]["ece"] <= 1
    assert sum(r["count"] for r in summary["calibration"]["reliability"]) == summary["examples"]
    assert "Calibration: ECE" in (run.dir / "report.md").read_text()
    assert (run.dir / "plots" / "reliability_test.png").is_file()
    assert "plots/reliability_test.png" in run.report()["test"]["plots"]


def test_temperature_scaling_lowers_ece_of_an_over_confident_model_everywhere(recipe_factory, new_run, tmp_path):
    """A digits ConvNet made over-confident on purpose (its head's weights and bias x 5, which keeps every
    label and sharpens every softmax): the temperature fitted on validation undoes it, lowers the test ECE,
    keeps every label, and the report and the ONNX export (the division in the graph) use it."""
    from nnrecipe.deploy import export
    from nnrecipe.deploy.calibrate import calibrate_run
    from nnrecipe.engine.checkpoint import load_weights, save_checkpoint, with_prefix
    from nnrecipe.models import head_parameter_names

    image = get_family("image_classification")
    recipe = recipe_factory("train.epochs=3")
    run = new_run(recipe)
    image.train(recipe, run)
    weights = load_weights(run.best_checkpoint)
    head = head_parameter_names(image.trained(run).model)
    save_checkpoint(
        run.best_checkpoint, with_prefix({k: v * 5 if k in head else v for k, v in weights.items()}, "model")
    )
    x = image.export_subject(run).batches[0]["input"][:8]
    sharp_logits = image.inference(run).model(x).detach()
    labels_before = image.probabilities(run, "test")[0].argmax(1)

    export.export_run(run, "onnx", out=tmp_path / "before.onnx")
    result = calibrate_run(run)
    # Measured: temperature 4.06, test ECE 0.093 -> 0.038, validation (144 images) 0.082 -> 0.059.
    assert result["temperature"] > 2
    assert result["ece_after"] < 0.6 * result["ece_before"], result
    assert result["val_ece"]["after"] < result["val_ece"]["before"]
    probs, _ = image.probabilities(run, "test")
    assert torch.equal(probs.argmax(1), labels_before)
    entry = run.report()["test"]
    assert entry["calibration"]["ece"] == pytest.approx(result["ece_after"])
    assert entry["temperature"]["ece_before"] == pytest.approx(result["ece_before"])
    assert "Temperature: " in (run.dir / "report.md").read_text()
    card = export.export_run(run, "onnx", out=tmp_path / "t.onnx")
    assert card["checks"]["max_abs_diff"] <= export.ATOL
    onnx = torch.from_numpy(export.onnx_outputs(tmp_path / "t.onnx", x))
    torch.testing.assert_close(onnx, sharp_logits / result["temperature"], rtol=1e-4, atol=1e-4)
    from nnrecipe.deploy.serve import load_predictor
    from nnrecipe.errors import UserError

    load_predictor(run, tmp_path / "t.onnx")  # its own temperature
    with pytest.raises(UserError, match=r"before.onnx: exported under temperature None, the run's is now 4"):
        load_predictor(run, tmp_path / "before.onnx")  # it served uncalibrated confidences


def test_a_text_run_is_calibrated_through_the_hugging_face_logits(trained_text_run, tmp_path, monkeypatch, capsys):
    import dataclasses
    import shutil

    from nnrecipe.deploy.calibrate import calibrate_run
    from nnrecipe.errors import UserError
    from nnrecipe.runs import open_run

    shutil.copytree(trained_text_run.dir, tmp_path / "run")  # the shared run stays as it is
    run = open_run(tmp_path / "run")
    text = get_family("text_classification")
    (before,) = text.predict(run, ["a wonderful film"])
    with pytest.raises(UserError, match="classifies all 24 validation examples correctly"):  # the toy set is easy
        calibrate_run(run)
    real = text.probabilities

    def with_one_mistake(run, split):  # one validation label the model now gets wrong: a temperature fits
        probs, labels = real(run, split)
        labels = labels.clone()
        labels[0] = 1 - labels[0]
        return probs, labels

    monkeypatch.setattr(text, "probabilities", with_one_mistake)
    result = calibrate_run(run)
    line = capsys.readouterr()
    assert result["split"] == "test" and (line.out + line.err).count("ECE") == 2
    (after,) = text.predict(run, ["a wonderful film"])
    assert after["label"] == before["label"] and result["temperature"] != pytest.approx(1.0)
    assert (after["confidence"] < before["confidence"]) == (result["temperature"] > 1)
    assert run.meta()["temperature"] == pytest.approx(result["temperature"])
    real_splits = text.splits  # a run reported on validation said "validation ECE a -> b; val ECE a -> b"
    monkeypatch.setattr(text, "splits", lambda recipe: dataclasses.replace(real_splits(recipe), test=None))
    assert calibrate_run(run)["split"] == "val"
    line = capsys.readouterr()
    assert (line.out + line.err).count("ECE") == 1


def test_a_validation_split_without_mistakes_fits_no_temperature():
    """All right: the NLL falls as T -> 0, and the fit returned 2e-7 (every answer 100% sure; export's parity
    check then failed on logits scaled by 1e7). One mistake among them bounds the fit."""
    from nnrecipe.errors import UserError
    from nnrecipe.models.calibrated import fit_temperature

    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.45, 0.55]])
    with pytest.raises(UserError, match="classifies all 4 validation examples correctly"):
        fit_temperature(probs, torch.tensor([0, 1, 0, 1]))
    t = fit_temperature(probs, torch.tensor([0, 1, 0, 0]))
    assert 0.1 < t < 100
