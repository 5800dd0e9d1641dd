"""Object detection: a Faster R-CNN learns the generated shapes, the three annotation formats read the
same boxes, the loader's flips move boxes with pixels and resume mid-epoch exactly, bad data is reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from nnrecipe.data.box_loader import DetectionLoader, read_rgb
from nnrecipe.data.boxes import load_detection_splits
from nnrecipe.data.shapes import CLASSES, shapes_dataset
from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import load_recipe, validate_recipe
from nnrecipe.runs import create_run, open_run
from nnrecipe.tasks import detection, get_family
from nnrecipe.tasks.detection_recipe import DetectionData

family = get_family("detection")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run on the shapes set, shared by the tests that use a trained detector."""
    tmp = tmp_path_factory.mktemp("det")
    recipe = load_recipe(
        ROOT / "recipes/shapes-detection.yaml",
        [
            f"track.runs_dir={tmp / 'runs'}",
            f"data.path={tmp / 'data'}",
            "track.progress=false",
            "track.tensorboard=false",
            "train.epochs=6",
        ],
    )
    run = create_run(recipe, "shapes")
    result = family.train(recipe, run)
    return run, result, recipe


def test_detector_learns_shapes_and_reports_map(trained):
    run, result, _ = trained
    assert result["status"] == "finished"
    # map_50 0.798 on an AVX2-only AMD EPYC (its fp32 kernels round differently), above 0.8 elsewhere
    assert result["map"] >= 0.5 and result["map_50"] >= 0.75, result
    assert set(result["per_class_ap"]) == set(CLASSES)
    report = json.loads((run.dir / "report.json").read_text())["val"]
    assert report["images"] == 80 and report["boxes"] > 80
    assert (run.dir / "plots" / "detections_val.png").is_file() and "mAP" in (run.dir / "report.md").read_text()
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_map"] > history[0]["val_map"]


def test_predicted_boxes_match_the_ground_truth(trained):
    """Most ground-truth objects of unseen images are found with the right class at IoU >= 0.5."""
    run, _, recipe = trained
    val = detection.detection_splits(recipe).val[:12]
    rows = family.predict(run, [item.path for item in val])
    found = total = 0
    for item, row in zip(val, rows):
        for box, label in zip(item.boxes, item.labels.tolist()):
            total += 1
            found += any(
                d["label"] == CLASSES[label] and box_iou(box[None], torch.tensor([d["box"]]))[0, 0] >= 0.5
                for d in row["detections"]
            )
    assert found / total >= 0.75, (found, total)
    folder = Path(val[0].path).parent  # a folder stands for the images under it (it was "image not found")
    listed = [r["file"] for r in family.predict(run, [str(folder)])]
    assert (
        listed == sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
        and str(val[0].path) in listed
    )


def test_predict_and_evaluate_through_the_cli(trained):
    run, _, recipe = trained
    image = detection.detection_splits(recipe).val[0].path
    cli = [sys.executable, "-m", "nnrecipe.cli"]
    out = subprocess.run([*cli, "predict", str(run.dir), image, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["detections"] and {"label", "score", "box"} <= set(row["detections"][0])
    out = subprocess.run(
        [*cli, "evaluate", str(run.dir), "--split", "test"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "no test split" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*cli, "predict", str(run.dir), "missing.png"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "missing.png" in out.stderr and "Traceback" not in out.stderr


def _as_coco_and_voc(yolo: Path, tmp: Path) -> tuple[Path, Path]:
    """Write the YOLO set's train split again as COCO JSON and as a Pascal VOC tree."""
    splits = load_detection_splits(DetectionData(format="yolo", path=yolo, train="train", val_fraction=0))
    coco = {"images": [], "annotations": [], "categories": [{"id": 10 + i, "name": c} for i, c in enumerate(CLASSES)]}
    voc = tmp / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    ids = []
    for n, item in enumerate(splits.train):
        coco["images"].append({"id": n, "file_name": Path(item.path).name, "width": item.width, "height": item.height})
        stem = Path(item.path).stem
        ids.append(stem)
        shutil.copy(item.path, voc / "JPEGImages" / Path(item.path).name)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = Path(item.path).name
        for box, label in zip(item.boxes.tolist(), item.labels.tolist()):
            x1, y1, x2, y2 = box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": n,
                    "category_id": 10 + label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = CLASSES[label]
            bb = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):  # VOC: 1-based
                ET.SubElement(bb, k).text = f"{v:.3f}"
        ET.ElementTree(root).write(voc / "Annotations" / f"{stem}.xml")
    (voc / "ImageSets/Main/train.txt").write_text("\n".join(ids))
    (yolo / "images" / "train" / "instances.json").write_text(json.dumps(coco))
    return yolo / "images" / "train" / "instances.json", voc


def test_yolo_coco_and_voc_annotations_read_the_same_boxes(tmp_path):
    yolo = shapes_dataset(tmp_path, n_train=8, n_val=2, size=64, seed=3)
    coco_file, voc = _as_coco_and_voc(yolo, tmp_path)
    read = {
        "yolo": load_detection_splits(DetectionData(format="yolo", path=yolo, train="train", val_fraction=0)),
        "coco": load_detection_splits(
            DetectionData(format="coco", path=yolo, train=str(coco_file.relative_to(yolo)), val_fraction=0)
        ),
        "voc": load_detection_splits(
            DetectionData(format="voc", path=voc, train="train", classes=CLASSES, val_fraction=0)
        ),
    }
    assert read["coco"].classes == CLASSES  # ordered by category id, not by file order
    base = read["yolo"].train
    assert len(base) == 8 and sum(len(b.boxes) for b in base) >= 8
    for fmt in ("coco", "voc"):
        other = read[fmt].train
        assert [Path(b.path).name for b in other] == [Path(b.path).name for b in base]
        for a, b in zip(base, other):
            assert torch.equal(a.labels, b.labels), fmt
            assert torch.allclose(a.boxes, b.boxes, atol=1e-2), fmt


def test_bad_files_are_reported_and_boxes_are_clipped(tmp_path):
    yolo = shapes_dataset(tmp_path, n_train=4, n_val=1, size=64, seed=1)
    images, labels = yolo / "images" / "train", yolo / "labels" / "train"
    (images / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (64, 64)).save(images / "edge.png")
    (labels / "edge.txt").write_text("0 0.95 0.5 0.3 0.2\n1 0.5 0.5 0.0 0.1\n")  # runs off the right edge; zero width
    Image.new("RGB", (64, 64)).save(images / "badclass.png")
    (labels / "badclass.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    Image.new("L", (100, 100)).save(images / "bomb.png")  # above the bomb limit set below: a traceback before
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 4096)
        splits = load_detection_splits(DetectionData(format="yolo", path=yolo, train="train", val_fraction=0))
    assert any("broken.png" in s for s in splits.skipped) and any(s.endswith("bomb.png") for s in splits.skipped)
    assert any("badclass.txt" in s and "class 7" in s for s in splits.skipped)
    edge = next(b for b in splits.train if b.path.endswith("edge.png"))
    assert edge.boxes.tolist() == [[pytest.approx(51.2), pytest.approx(25.6), 64.0, pytest.approx(38.4)]]
    assert splits.dropped_boxes == 1
    with pytest.raises(UserError, match="images/nope"):
        load_detection_splits(DetectionData(format="yolo", path=yolo, train="nope"))
    with pytest.raises(UserError, match="not found"):
        load_detection_splits(DetectionData(format="coco", path=yolo, train="missing.json"))
    for f in labels.glob("*.txt"):  # no box anywhere: it trained on background alone and reported mAP n/a
        f.write_text("")
    with pytest.raises(UserError, match=r"data.train: none of the \d+ images in .* has a box"):
        load_detection_splits(DetectionData(format="yolo", path=yolo, train="train", val_fraction=0))
    (yolo / "data.yaml").write_text("names: [circle, square\n")  # damaged: a YAML traceback before
    with pytest.raises(UserError, match=r"data.yaml: not valid YAML"):
        load_detection_splits(DetectionData(format="yolo", path=yolo, train="train"))
    with pytest.raises(UserError, match=r"data.yaml: not valid YAML"):  # where the splits default to its train/val
        detection.detection_splits(
            validate_recipe({"task": "detection", "data": {"format": "yolo", "path": str(yolo)}})
        )


def test_recipe_errors_name_the_field():
    with pytest.raises(RecipeError, match="data.path is required"):
        validate_recipe({"task": "detection", "data": {"format": "yolo"}})
    with pytest.raises(RecipeError, match="model.name: must be one of"):
        validate_recipe({"task": "detection", "model": {"name": "yolov8"}})
    recipe = validate_recipe({"task": "detection", "train": {"epochs": 2}})
    assert recipe.train.monitor == "val_map" and recipe.train.clip_grad_norm == 10.0  # task defaults kept


def test_loader_flips_boxes_with_pixels_and_resumes_mid_epoch(tmp_path, monkeypatch):
    """Images are decoded per batch (nothing is held but the annotations): a late start decodes only the
    images of the batches it yields."""
    from nnrecipe.data import box_loader

    yolo = shapes_dataset(tmp_path, n_train=12, n_val=1, size=64, seed=2)
    items = load_detection_splits(DetectionData(format="yolo", path=yolo, train="train", val_fraction=0)).train
    loader = DetectionLoader(items, 3, device="cpu", shuffle=True, seed=5, hflip=True)
    full = list(loader.batches(epoch=1))
    decoded: list[str] = []
    monkeypatch.setattr(box_loader, "read_rgb", lambda path: decoded.append(path) or read_rgb(path))
    resumed = list(loader.batches(epoch=1, start=2))
    assert len(full) == 4 and len(resumed) == 2 and len(decoded) == 6
    for (xa, ta), (xb, tb) in zip(full[2:], resumed):
        assert all(torch.equal(a, b) for a, b in zip(xa, xb))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ta, tb))
    flipped = 0
    for images, targets in full:
        for img, t in zip(images, targets):
            plain = next(
                i for i in items if torch.equal(read_rgb(i.path), img) or torch.equal(read_rgb(i.path).flip(-1), img)
            )
            flipped += not torch.equal(read_rgb(plain.path), img)
            for box in t["boxes"].round().int().tolist():  # shapes are bright on a dark background
                x1, y1, x2, y2 = box
                assert img[:, y1:y2, x1:x2].mean() > img.mean(), "a box lost its object"
            assert torch.equal(t["labels"], plain.labels + 1)
    assert 0 < flipped < 12


def _png(path: str, size: tuple[int, int] | None = None) -> bytes:
    import io

    with Image.open(path) as im:
        im = im.convert("RGB") if size is None else im.convert("RGB").resize(size)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def test_serving_detection_returns_boxes_and_enforces_limits(trained):
    import base64

    from fastapi.testclient import TestClient

    from nnrecipe.deploy.serve import ServeConfig, create_app

    run, _, recipe = trained
    item = detection.detection_splits(recipe).val[0]
    auth = {"Authorization": "Bearer k3y"}
    with TestClient(
        create_app(
            ServeConfig(run_dir=run.dir, api_keys=["k3y"], max_batch=4, precision="fp32", max_image_pixels=160 * 160)
        )
    ) as client:
        assert (
            client.post("/v1/predict", json={"inputs": [base64.b64encode(_png(item.path)).decode()]}).status_code == 401
        )
        r = client.post("/v1/predict", headers=auth, json={"inputs": [base64.b64encode(_png(item.path)).decode()]})
        assert r.status_code == 200, r.text
        found = r.json()["predictions"][0]["detections"]
        best = max(found, key=lambda d: d["score"])
        assert box_iou(torch.tensor([best["box"]]), item.boxes).max() >= 0.5
        up = client.post("/v1/predict", headers=auth, files=[("files", ("a.png", _png(item.path), "image/png"))] * 2)
        assert up.status_code == 200 and len(up.json()["predictions"]) == 2
        bad = client.post("/v1/predict", headers=auth, json={"inputs": [base64.b64encode(b"not an image").decode()]})
        assert bad.status_code == 422 and "inputs[0]" in bad.json()["detail"]
        big = client.post(
            "/v1/predict", headers=auth, json={"inputs": [base64.b64encode(_png(item.path, (200, 200))).decode()]}
        )
        assert big.status_code == 422 and "the limit is 25600 pixels" in big.json()["detail"]
        card = client.get("/v1/model", headers=auth).json()
        assert card["task"] == "detection" and card["labels"] == CLASSES and card["metrics"]["val"]["map"] > 0.5
        schema = client.get("/openapi.json", headers=auth).json()
        assert "ImageDetections" in json.dumps(schema["components"]["schemas"])


def test_detection_exports_match_pytorch_and_run_on_other_image_sizes(trained, tmp_path):
    import onnxruntime as ort

    from nnrecipe.deploy.export import export_run

    run, _, recipe = trained
    ts = export_run(run, "torchscript", tmp_path / "det.pt")
    assert ts["checks"]["validation_images"] == 8 and ts["checks"]["max_box_diff_px"] <= 1e-2
    card = export_run(run, "onnx", tmp_path / "det.onnx")
    assert card["task"] == "detection" and card["checks"]["max_score_diff"] <= 1e-4
    assert json.loads((tmp_path / "det.onnx.card.json").read_text())["sha256"]["artefact"]
    item = detection.detection_splits(recipe).val[1]
    wide = torch.nn.functional.interpolate(read_rgb(item.path)[None], size=(128, 192), mode="bilinear")[0]
    boxes, labels, scores = ort.InferenceSession(str(tmp_path / "det.onnx")).run(None, {"image": wide.numpy()})
    with torch.no_grad():
        ref = family.inference(run).model([wide])[0]
    assert np.array_equal(labels, ref["labels"].numpy()) and np.allclose(boxes, ref["boxes"].numpy(), atol=1e-2)
    with pytest.raises(UserError, match="int8: not offered for detection"):
        export_run(run, "onnx", tmp_path / "q.onnx", "int8")

    from fastapi.testclient import TestClient

    from nnrecipe.deploy.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=["k"], onnx=tmp_path / "det.onnx"))) as client:
        auth = {"Authorization": "Bearer k"}
        served = client.post(
            "/v1/predict", headers=auth, files=[("files", ("w.png", _png(item.path), "image/png"))]
        ).json()
        assert client.get("/v1/model", headers=auth).json()["backend"] == "onnxruntime"
    with torch.no_grad():
        eager = detection.detections(
            family.inference(run).model([read_rgb(item.path)])[0],
            CLASSES,
            recipe.model.score_threshold,
        )
    assert [d["label"] for d in served["predictions"][0]["detections"]] == [d["label"] for d in eager]


def test_detection_export_parity_check_refuses_a_mismatch():
    from nnrecipe.deploy.export import ExportMismatch
    from nnrecipe.deploy.export_detection import check_detections

    ref = [
        {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}
    ]
    same = [{k: v.numpy() for k, v in ref[0].items()}]
    assert check_detections(ref, same, "x")["max_box_diff_px"] == 0.0
    with pytest.raises(ExportMismatch, match="boxes differ"):
        check_detections(ref, [same[0] | {"boxes": same[0]["boxes"] + 0.5}], "x")
    with pytest.raises(ExportMismatch, match="labels"):
        check_detections(ref, [same[0] | {"labels": np.array([1])}], "x")


def test_pretrained_detector_weights_load_by_name_and_the_run_rebuilds_with_frozen_norm(tmp_path):
    """torchvision's own builder (91 COCO classes) stands in for its COCO checkpoint: everything but the box
    predictor loads; a run started from such weights is rebuilt with the same frozen BatchNorm."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    from nnrecipe.models.detection import build_detector

    coco = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    ours = build_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn", 3, min_size=320, max_size=640, weights=tmp_path / "coco.pth"
    )
    theirs, mine = coco.state_dict(), ours.state_dict()
    assert torch.equal(mine["rpn.head.conv.0.0.weight"], theirs["rpn.head.conv.0.0.weight"])
    assert torch.equal(mine["backbone.body.0.0.weight"], theirs["backbone.body.0.0.weight"])
    assert mine["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 classes + background
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert "backbone.body.0.0.weight" not in trainable and "rpn.head.conv.0.0.weight" in trainable
    spec = detection.DetectionSpec(
        ["a", "b", "c"], "fasterrcnn_mobilenet_v3_large_320_fpn", 320, 640, 0.5, frozen_norm=True
    )
    spec.build_model().load_state_dict(mine)  # strict: same modules as at training time


def test_pruning_a_detection_run_gives_a_scored_usable_run(trained):
    from nnrecipe.deploy.prune import prune_run

    run, result, _ = trained
    stats = prune_run(run, 0.3)
    assert stats["metric"] == "val map" and stats["before"] == pytest.approx(result["map"])
    assert 0.29 <= stats["sparsity"] <= 0.31 and stats["after"] >= stats["before"] - 0.1
    structured = open_run(prune_run(run, 0.2, structured=True)["run"])
    pruned = family.inference(structured).model
    assert pruned.roi_heads.box_predictor.cls_score.weight.abs().sum(1).ne(0).all()  # class outputs kept whole
    assert pruned.roi_heads.box_head.fc6.weight.abs().sum(1).eq(0).float().mean() == pytest.approx(0.2, abs=0.01)
    tuned = prune_run(run, 0.5, finetune_epochs=1)  # one epoch at a tenth of the LR, masks held
    assert tuned["finetune_epochs"] == 1 and 0.49 <= tuned["sparsity"] <= 0.51 and tuned["after"] > 0.2


def test_a_split_without_any_boxes_is_reported_as_not_applicable(trained):
    """COCO scores -1 when there is nothing to find; the report says n/a instead of failing on it."""
    from dataclasses import replace

    run, _, recipe = trained
    empty = [
        replace(item, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))
        for item in detection.detection_splits(recipe).val[:4]
    ]
    summary = family.report(run, recipe, empty, "empty", "cpu")
    assert summary["map"] is None and summary["boxes"] == 0
    assert "mAP n/a" in (run.dir / "report.md").read_text()


def test_yolo_segmentation_polygons_are_read_as_their_boxes(tmp_path):
    """A YOLO-seg label row (class, then x y pairs of a polygon, as Ultralytics exports) was read as its first
    four numbers, a box in the wrong place; a row of another length is named."""
    root = tmp_path / "seg"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(root / "images" / "train" / "a.png")
    Image.new("RGB", (200, 100)).save(root / "images" / "train" / "b.png")
    (root / "data.yaml").write_text("train: images/train\nnames:\n  0: thing\n")
    (root / "labels" / "train" / "a.txt").write_text("0 0.1 0.2 0.5 0.2 0.3 0.8\n0 0.5 0.5 0.2 0.4\n")
    (root / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.2\n")
    splits = load_detection_splits(DetectionData(format="yolo", path=root, train="train", val_fraction=0))
    (item,) = splits.train
    assert torch.allclose(item.boxes, torch.tensor([[20.0, 20, 100, 80], [80, 30, 120, 70]]))
    assert len(splits.skipped) == 1 and "b.txt: line 1: 3 numbers after the class" in splits.skipped[0]


def test_a_coco_file_missing_a_field_is_named_not_a_traceback(tmp_path):
    """A tool's export that left out a box, an image id or a category name was a KeyError (or TypeError)."""
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    good = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 5, 4]}]}  # fmt: skip
    cases = [
        ("annotations", 0, "bbox", None, r"annotations\[0\] has no 'bbox'"),
        ("images", 0, "id", None, r"images\[0\] has no 'id'"),
        ("categories", 0, "name", None, r"categories\[0\] has no 'name'"),
        ("annotations", 0, "bbox", [1, 2, "x", 4], r"annotations\[0\].bbox is \[1, 2, 'x', 4\]; COCO boxes are"),
    ]
    for section, i, key, value, message in cases:
        coco = json.loads(json.dumps(good))
        if value is None:
            del coco[section][i][key]
        else:
            coco[section][i][key] = value
        (tmp_path / "inst.json").write_text(json.dumps(coco))
        with pytest.raises(UserError, match=rf"inst.json: {message}"):
            load_detection_splits(DetectionData(format="coco", path=tmp_path, train="inst.json", val_fraction=0))
    (tmp_path / "inst.json").write_text(json.dumps(good))
    (item,) = load_detection_splits(
        DetectionData(format="coco", path=tmp_path, train="inst.json", val_fraction=0)
    ).train
    assert item.boxes.tolist() == [[1.0, 2.0, 6.0, 6.0]]


def test_a_voc_box_without_numbers_skips_its_image_naming_the_file(tmp_path):
    """A bndbox missing a corner, or holding a word, was float()'s traceback."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / d).mkdir(parents=True)
    for stem, xmax in (("good", "<xmax>10</xmax>"), ("bad", "<xmax>ten</xmax>"), ("short", "")):
        Image.new("RGB", (20, 20)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
            f"{xmax}<ymax>10</ymax></bndbox></object></annotation>"
        )
    (tmp_path / "ImageSets/Main/train.txt").write_text("good\nbad\nshort\n")
    splits = load_detection_splits(
        DetectionData(format="voc", path=tmp_path, train="train", val_fraction=0, classes=["x"])
    )
    assert [Path(i.path).stem for i in splits.train] == ["good"] and splits.train[0].boxes.tolist() == [[1, 1, 10, 10]]
    assert len(splits.skipped) == 2 and all("bndbox needs numbers" in s for s in splits.skipped), splits.skipped
