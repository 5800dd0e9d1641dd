"""Seeds and ensembles: `train --seeds` summarises mean +/- std over real runs, `--ensemble` and
`nnrecipe ensemble` average members' probabilities (checked by hand), and every verb takes the result."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tests.conftest import in_process
from tests.test_serve import b64, digit_png

from nnrecipe.deploy import export
from nnrecipe.deploy.serve import ServeConfig, create_app
from nnrecipe.errors import UserError
from nnrecipe.runs import open_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.ensemble import create_ensemble
from nnrecipe.tasks.image_classification import predict_probs
from nnrecipe.tasks.image_inputs import eval_loader

image = get_family("image_classification")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Three seeds of one digits ConvNet recipe, and their ensemble, trained through the CLI."""
    runs = tmp_path_factory.mktemp("seeds") / "runs"
    recipe = tmp_path_factory.mktemp("recipe") / "digits.yaml"
    recipe.write_text(
        "data: {source: digits, limit: 700}\nmodel: {name: convnet}\ntrain: {epochs: 2, batch_size: 64}\n"
        f"track: {{runs_dir: {runs}, progress: false, plots: false, tensorboard: false, name: digits}}\n"
    )
    code, output = in_process("train", recipe, "--seeds", "0", "1", "2", "--ensemble")
    assert code == 0, output
    return runs


def test_seeds_summary_is_the_mean_and_std_of_the_runs(seeded):
    summary = json.loads((seeded / "digits-seeds" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    accuracies = [open_run(p).report()["test"]["accuracy"] for p in summary["runs"]]
    assert [open_run(p).recipe().train.seed for p in summary["runs"]] == [0, 1, 2]
    assert len(set(accuracies)) > 1  # different seeds really trained different models
    acc = summary["metrics"]["accuracy"]
    assert acc["values"] == accuracies
    assert acc["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert acc["std"] == pytest.approx(statistics.stdev(accuracies))
    assert "macro_avg.f1-score" in summary["metrics"]
    md = (seeded / "digits-seeds" / "summary.md").read_text()
    assert f"**accuracy: {acc['mean']:.4f} +/- {acc['std']:.4f}**" in md and "Ensemble of them" in md


def test_the_ensemble_averages_the_members_probabilities(seeded):
    ens = open_run(seeded / "digits-ensemble")
    members = [open_run(p) for p in ens.meta()["ensemble"]["members"]]
    recipe = ens.recipe()
    part = image.splits(recipe).test
    probs = []
    for m in members:
        inf = image.trained(m)
        probs.append(predict_probs(inf.model, eval_loader(recipe, inf.spec, part, "cpu"))[0])
    mean = torch.stack(probs).mean(0)
    by_hand = (mean.argmax(1) == torch.as_tensor(part.labels)).float().mean().item()
    entry = ens.report()["test"]
    assert entry["accuracy"] == pytest.approx(by_hand)
    scores = entry["members"]["scores"]
    assert list(scores) == [m.dir.name for m in members]
    assert scores == {m.dir.name: m.report()["test"]["accuracy"] for m in members}
    assert entry["members"]["gain_over_mean"] == pytest.approx(by_hand - statistics.fmean(scores.values()))
    md = (ens.dir / "report.md").read_text()
    assert "Weights: an ensemble of 3 runs" in md and "| **ensemble** |" in md and "over the best member" in md
    # Re-evaluating keeps the comparison (it lives in run.json, not in the first report only).
    code, _ = in_process("evaluate", ens.dir)
    assert code == 0 and "| **ensemble** |" in (ens.dir / "report.md").read_text()


def test_an_ensemble_predicts_exports_one_graph_and_serves(seeded, tmp_path):
    ens = open_run(seeded / "digits-ensemble")
    card = export.export_run(ens, "onnx", out=tmp_path / "ensemble.onnx")
    assert card["checks"]["max_abs_diff"] <= export.ATOL
    assert card["model"].startswith("ensemble of 3: convnet")
    x = image.export_subject(ens).batches[0]["input"][:5]
    with torch.no_grad():
        eager = image.inference(ens).model(x)
    np.testing.assert_allclose(export.onnx_outputs(tmp_path / "ensemble.onnx", x), eager.numpy(), atol=1e-4)

    from sklearn.datasets import load_digits

    png = tmp_path / "d.png"
    png.write_bytes(digit_png(3))
    (row,) = image.predict(ens, [str(png)])
    assert row["label"] == str(load_digits().target[3])
    with TestClient(create_app(ServeConfig(run_dir=ens.dir, api_keys=["k"], precision="fp32"))) as c:
        got = c.post("/v1/predict", json={"inputs": [b64(digit_png(3))]}, headers={"Authorization": "Bearer k"})
        assert got.status_code == 200 and got.json()["predictions"][0]["label"] == row["label"]


def test_weights_and_bad_ensembles_are_refused_in_one_line(seeded, tmp_path, trained_text_run):
    members = json.loads((seeded / "digits-seeds" / "summary.json").read_text())["runs"]
    code, output = in_process("ensemble", *members[:2], "--weights", "1,0", "--name", "first-only")
    assert code == 0, output
    only = open_run(seeded / "first-only")
    assert only.report()["test"]["accuracy"] == pytest.approx(open_run(members[0]).report()["test"]["accuracy"])
    assert "weights 1, 0" in only.meta()["weights"]
    with pytest.raises(UserError, match="one non-negative weight per run"):
        create_ensemble(members, "w", [1.0])
    for bad in ([math.nan, 1.0], [math.inf, 1.0]):  # nan made every probability nan: accuracy 0.1
        with pytest.raises(UserError, match="one non-negative weight per run"):
            create_ensemble(members[:2], "w", bad)
    with pytest.raises(UserError, match=r"--name: one folder name, without / or \.\. \(got '\.\./\.\./out'\)"):
        create_ensemble(members[:2], "../../out")  # was written outside the runs folder
    assert not (seeded.parent.parent / "out").exists()
    with pytest.raises(UserError, match="give two runs or more"):
        create_ensemble(members[:1])
    with pytest.raises(UserError, match="is given twice; weight a member with --weights instead"):
        first = Path(members[0])
        again = first.parent / ".." / first.parent.name / first.name  # the same run, spelled apart
        create_ensemble([members[0], again])  # was an ensemble of one model, called two
    with pytest.raises(UserError, match="belong to different tasks"):
        create_ensemble([members[0], trained_text_run.dir])
    with pytest.raises(UserError, match="is an ensemble itself"):
        create_ensemble([members[0], seeded / "digits-ensemble"])
    code, output = in_process("prune", seeded / "digits-ensemble")
    assert code == 1 and "is an ensemble; prune one of its members instead" in output
    code, output = in_process("train", "x.yaml", "--ensemble")
    assert code == 1 and "--ensemble: goes with --seeds" in output


def test_members_must_share_labels_inputs_and_tokenizer():
    from types import SimpleNamespace

    from nnrecipe.tasks.ensemble import check_inputs
    from nnrecipe.tasks.family import Inference
    from nnrecipe.tasks.image_inputs import ImageSpec

    runs = [SimpleNamespace(dir=Path(n)) for n in ("a", "b")]
    spec = ImageSpec(["0", "1"], 1, 8, [0.5], [0.2], "convnet")

    def two(**b):
        return [
            Inference(None, ["0", "1"], spec),
            Inference(None, b.pop("labels", ["0", "1"]), b.pop("spec", spec), **b),
        ]

    check_inputs(image, runs, two(spec=dataclasses.replace(spec, model="resnet18")))  # architectures may differ
    with pytest.raises(UserError, match="b predicts other labels than a"):
        check_inputs(image, runs, two(labels=["1", "0"]))
    with pytest.raises(UserError, match=r"prepare inputs differently \(image_size: 16 vs 8\)"):
        check_inputs(image, runs, two(spec=dataclasses.replace(spec, image_size=16)))
    with pytest.raises(UserError, match="tokenize differently"):
        check_inputs(image, runs, two(tokenizer=SimpleNamespace(get_vocab=dict)))


def test_members_trained_on_other_data_are_refused(tmp_path, recipe_factory, new_run):
    a = new_run(recipe_factory("train.epochs=1", "data.limit=300"), "a")
    image.train(a.recipe(), a)
    b = new_run(recipe_factory("train.epochs=1", "data.limit=400"), "b")
    image.train(b.recipe(), b)
    with pytest.raises(UserError, match="trained on other data"):
        create_ensemble([a.dir, b.dir])
    assert not any(p.name.startswith("ensemble-") for p in a.dir.parent.iterdir())


def rounded(value):
    """Floats to 5 places, all the way down (predict rows nest)."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_an_ensemble_of_text_runs_uses_the_models_logits(trained_text_run, trained_ner_run, tmp_path):
    """HF outputs (.logits), the shared tokenizer check, per-token probabilities for NER: an ensemble of a
    run with a copy of itself answers exactly as the run does."""
    import shutil

    for run, family, text in (
        (trained_text_run, get_family("text_classification"), "a wonderful film"),
        (trained_ner_run, get_family("token_classification"), "Alice lives in Paris"),
    ):
        copy = shutil.copytree(run.dir, tmp_path / f"{family.name}-copy")  # the same run twice is refused
        ens = create_ensemble([run.dir, copy], "twice", runs_dir=tmp_path / family.name)
        assert rounded(family.predict(ens, [text])) == rounded(family.predict(run, [text]))
        metric = family.metric.name
        assert ens.report()["test" if "test" in ens.report() else "val"][metric] == pytest.approx(
            next(iter(run.report().values()))[metric]
        )


def test_seeds_with_ensemble_under_a_name_used_before_keep_both_results(tmp_path):
    """The second `--seeds 0 1 --ensemble --name x` trained every seed, then stopped at "ensemble: x-ensemble
    exists already" and wrote no summary; and a second --seeds summary replaced the first."""
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(
        "data: {source: digits, limit: 300}\nmodel: {name: mlp}\ntrain: {epochs: 1}\n"
        f"track: {{runs_dir: {tmp_path / 'runs'}, progress: false, plots: false, tensorboard: false, name: x}}\n"
    )
    for _ in range(2):
        code, output = in_process("train", recipe, "--seeds", "0", "1", "--ensemble")
        assert code == 0, output
    assert len(list((tmp_path / "runs").glob("x-seeds*/summary.json"))) == 2
    assert len(list((tmp_path / "runs").glob("x-ensemble*/run.json"))) == 2


def test_seed_lists_parse_and_bad_ones_are_named():
    from nnrecipe.seeds import parse_seeds

    assert parse_seeds(["0", "1", "2"]) == parse_seeds(["0,1,2"]) == parse_seeds(["0-2"]) == [0, 1, 2]
    assert parse_seeds(["4294967294-4294967295"]) == [2**32 - 2, 2**32 - 1]
    for bad in (["0"], ["1", "1"], ["a-b"], ["0.5", "1"], ["-1", "3"], ["0", "4294967296"]):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    # a typo'd range is refused before it is listed (0-4294967295 took the memory of 4 billion ints)
    with pytest.raises(UserError, match="at most 1000 runs at once"):
        parse_seeds(["0-4294967295"])


def test_rl_seeds_set_the_families_own_seed_field(tmp_path):
    """RL recipes keep their seed at the top level (`seed`), not in train.seed: the family says which."""
    from tests.test_rl import MAZE, rl_recipe

    from nnrecipe.seeds import train_seeds

    recipe = rl_recipe(tmp_path, env__id="gridmap", env__map=MAZE, tabular__episodes=150, eval__episodes=3)
    recipe.track.name, recipe.track.plots = "maze", False
    summary = train_seeds(recipe, "maze", [3, 4])
    runs = [open_run(p) for p in summary["runs"]]
    assert [r.recipe().seed for r in runs] == [3, 4]
    ret = summary["metrics"]["mean_return"]
    assert ret["mean"] == pytest.approx(statistics.fmean(ret["values"]))
    assert (tmp_path / "runs" / "maze-seeds" / "summary.md").is_file()
    again = train_seeds(recipe, "maze", [3, 4])  # the same name again: its runs got new names, and the
    first = json.loads((tmp_path / "runs" / "maze-seeds" / "summary.json").read_text())  # summary replaced
    assert first["runs"] == summary["runs"] and set(again["runs"]).isdisjoint(summary["runs"])
    assert len(list((tmp_path / "runs").glob("maze-seeds*/summary.json"))) == 2
