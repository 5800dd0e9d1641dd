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
