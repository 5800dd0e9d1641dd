"""Text classification and NER runs through export (ONNX with dynamic batch and sequence, int8) and the
model server (texts in, labels or entities with offsets out, text-length limits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nnrecipe.deploy import export
from nnrecipe.deploy.serve import ServeConfig, create_app
from nnrecipe.tasks import family_of

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_text_onnx_export_has_dynamic_batch_and_sequence_and_matches_pytorch(trained_text_run):
    card = export.export_run(trained_text_run, "onnx")
    assert card["checks"]["max_abs_diff"] <= export.ATOL and card["checks"]["validation_examples"] == 24
    assert card["labels"] == ["neg", "pos"] and card["input"]["input_ids"]["shape"] == ["batch", "sequence"]
    subject = family_of(trained_text_run).export_subject(trained_text_run)
    batch = subject.batches[0]
    path = trained_text_run.dir / "export" / "model.onnx"
    for rows, width in ((1, 4), (5, batch["input_ids"].shape[1])):
        part = {k: v[:rows, :width] for k, v in batch.items()}
        with __import__("torch").no_grad():
            expected = subject.model(*subject.args(part)).numpy()
        assert abs(export.onnx_outputs(path, part) - expected).max() <= export.ATOL


def test_text_int8_is_dynamic_quantization_with_measured_change(trained_text_run):
    c = export.export_run(trained_text_run, "onnx", quantize="int8")["checks"]
    assert c["method"] == "dynamic" and c["size_int8_mb"] < c["size_fp32_mb"] / 2
    assert abs(c["accuracy_change"]) <= 0.1 and c["accuracy_int8"] >= 0.8


def test_ner_onnx_export_matches_pytorch_per_token(trained_ner_run, tmp_path):
    card = export.export_run(trained_ner_run, "onnx", out=tmp_path / "ner.onnx")
    assert card["checks"]["max_abs_diff"] <= export.ATOL and card["output"]["shape"][:2] == ["batch", "sequence"]
    assert card["validation_accuracy_pytorch"] > 0.9  # per scored token


@pytest.fixture(scope="module")
def text_client(trained_text_run):
    with TestClient(
        create_app(ServeConfig(run_dir=trained_text_run.dir, api_keys=[KEY], max_batch=4, max_text_chars=200))
    ) as c:
        yield c


def test_serving_text_returns_labels_and_enforces_text_limits(text_client):
    r = text_client.post(
        "/v1/predict", json={"inputs": ["the film is wonderful", "the plot is dreadful"]}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]
    long = text_client.post("/v1/predict", json={"inputs": ["fine", "x" * 201]}, headers=AUTH)
    assert long.status_code == 422 and "inputs[1]: 201 characters; the limit is 200" in long.json()["detail"]
    assert text_client.post("/v1/predict", json={"inputs": ["  "]}, headers=AUTH).status_code == 422
    assert "limit is 4" in text_client.post("/v1/predict", json={"inputs": ["a"] * 5}, headers=AUTH).json()["detail"]
    files = [("files", ("a.txt", b"the cast is superb", "text/plain")), ("files", ("b.txt", b"\xff\xfe", "text/plain"))]
    bad = text_client.post("/v1/predict", files=files, headers=AUTH)
    assert bad.status_code == 422 and "inputs[1]: not UTF-8" in bad.json()["detail"]
    ok = text_client.post("/v1/predict", files=files[:1], headers=AUTH)
    assert ok.json()["predictions"][0]["label"] == "pos"
    card = text_client.get("/v1/model", headers=AUTH).json()
    assert card["task"] == "text_classification" and card["metrics"]["test"]["accuracy"] >= 0.9


def test_serving_ner_returns_entities_with_offsets_from_pytorch_and_onnx(trained_ner_run, tmp_path):
    text = "Yesterday, Maria Schmidt toured Osaka again."
    onnx_path = tmp_path / "ner.onnx"
    export.export_run(trained_ner_run, "onnx", out=onnx_path)
    results = []
    for onnx in (None, onnx_path):
        with TestClient(create_app(ServeConfig(run_dir=trained_ner_run.dir, api_keys=[KEY], onnx=onnx))) as c:
            r = c.post("/v1/predict", json={"inputs": [text]}, headers=AUTH)
            assert r.status_code == 200, r.text
            results.append(r.json()["predictions"][0]["entities"])
            schema = c.get("/openapi.json", headers=AUTH).json()
            assert "TaggedText" in json.dumps(schema["components"])
    assert results[0] == results[1]
    assert [(e["text"], e["type"]) for e in results[0]] == [("Maria Schmidt", "PER"), ("Osaka", "LOC")]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in results[0])


def test_pruning_text_and_ner_runs_reports_the_task_metric(trained_text_run, trained_ner_run):
    from nnrecipe.deploy.prune import prune_run

    text = prune_run(trained_text_run, 0.2)
    assert text["metric"].endswith("accuracy") and 0.19 <= text["sparsity"] <= 0.21 and text["after"] >= 0.5
    ner = prune_run(trained_ner_run, 0.2)
    assert ner["metric"].endswith("f1") and 0.19 <= ner["sparsity"] <= 0.21 and ner["after"] is not None


def test_pruned_text_run_fine_tunes_with_its_zeros_kept(trained_text_run):
    from nnrecipe.deploy.prune import prunable, prune_run
    from nnrecipe.runs import open_run
    from nnrecipe.tasks import family_of

    stats = prune_run(trained_text_run, 0.3, finetune_epochs=1)
    out = open_run(stats["run"])
    assert out.meta()["status"] == "finished" and stats["after"] is not None
    model = family_of(out).inference(out).model
    weights = [m.weight for _, m in prunable(model, False)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.29  # fine-tuning moved the weights but regrew none of the pruned ones


def test_a_terminal_shows_a_bar_while_texts_are_predicted_and_scored(trained_text_run, trained_ner_run, monkeypatch):
    """A --file of many texts was predicted, or scored by `evaluate --data`, for minutes without a sign of
    life (image folders had a bar); the bar changes no row."""
    import io

    from rich.console import Console

    from nnrecipe.engine import loop

    texts = ["a fine film", "dull and long", "John lives in Paris"]
    for run in (trained_text_run, trained_ner_run):
        family = family_of(run)
        quiet = family.predict(run, texts)
        out = io.StringIO()
        data = run.recipe().data
        other = Path(data.test or data.val)  # as `evaluate --data FILE`: the bar names the file, not its path
        with monkeypatch.context() as m:
            m.setattr(loop, "console", Console(file=out, force_terminal=True, width=80))
            assert family.predict(run, texts) == quiet
            family.evaluate(run, "val")
            family.evaluate(run, data_path=str(other))
        assert "predicting" in out.getvalue() and "3/3" in out.getvalue(), family.name
        assert "scoring val" in out.getvalue() and f"scoring {other.name}" in out.getvalue(), family.name
