"""Object-detection data: YOLO, COCO and Pascal VOC annotations read into one list of boxed images.

Every format becomes `BoxedImage(path, boxes, labels)` with boxes in absolute pixels (x1, y1, x2, y2)
and 0-based class indices into one class list. Only image headers are read here (YOLO boxes need the
image size); pixels are decoded per batch, so COCO-sized sets never sit in memory. Files that cannot
be read are skipped and reported; boxes outside the image are clipped, empty ones dropped and counted.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from nnrecipe.data.files import hidden
from nnrecipe.data.images import IMAGE_SUFFIXES
from nnrecipe.data.pixels import upright_size
from nnrecipe.data.splits import holdout
from nnrecipe.errors import TEXT_ENCODING, UserError, existing_file, read_utf8, read_yaml_mapping


@dataclass
class BoxedImage:
    path: str
    width: int
    height: int
    boxes: torch.Tensor  # float32, N x 4, x1 y1 x2 y2 in pixels
    labels: torch.Tensor  # int64, N, 0-based class index


@dataclass
class DetectionSplits:
    classes: list[str]
    train: list[BoxedImage]
    val: list[BoxedImage] | None
    test: list[BoxedImage] | None
    skipped: list[str] = field(default_factory=list)  # unreadable images or annotation files
    dropped_boxes: int = 0  # degenerate boxes (zero area after clipping)


def load_detection_splits(data) -> DetectionSplits:
    """Read the recipe's `data` section (format, path, train/val/test) into splits; hold back
    val_fraction of train (seeded) when no val split is named."""
    root = Path(data.path)
    if not root.exists():
        raise UserError(f"data.path: not found: {root}")
    reader = {"yolo": _yolo_split, "coco": _coco_split, "voc": _voc_split}[data.format]
    classes = list(data.classes) if data.classes else _classes(data.format, root, data.train)
    out = DetectionSplits(classes, [], None, None)
    for name in ("train", "val", "test"):
        where = getattr(data, name)
        if where is not None:
            setattr(out, name, reader(root, where, classes, out))
    if not out.train:
        raise UserError(f"data.train: no readable annotated images in {root} / {data.train}")
    if not any(len(item.boxes) for item in out.train):  # it trained on background alone and reported mAP n/a
        raise UserError(
            f"data.train: none of the {len(out.train)} images in {root} / {data.train} has a box "
            f"(the {data.format} annotations are empty or missing)"
        )
    if data.limit:
        out.train = out.train[: data.limit]
    if out.val is None and data.val_fraction > 0:
        kept, held = holdout(len(out.train), data.val_fraction, data.split_seed)
        out.val, out.train = [out.train[i] for i in held], [out.train[i] for i in kept]
    return out


def yolo_meta(path: Path) -> dict:
    """A YOLO set's data.yaml (train, val, names), {} when absent; a damaged one is a one-line error."""
    return read_yaml_mapping(path, "expected a mapping (train:, val:, names:)") if path.is_file() else {}


def _classes(fmt: str, root: Path, train: str) -> list[str]:
    if fmt == "yolo":
        for name in ("data.yaml", "dataset.yaml", "classes.txt"):
            f = root / name
            if f.is_file():
                if f.suffix == ".txt":
                    return [line.strip() for line in read_utf8(f).splitlines() if line.strip()]
                names = yolo_meta(f).get("names")
                if isinstance(names, dict):
                    return [str(names[k]) for k in sorted(names)]
                if isinstance(names, list):
                    return [str(n) for n in names]
        raise UserError(f"data.classes: not given, and {root} has no data.yaml (names: ...) or classes.txt")
    if fmt == "coco":
        cats = coco_entries(root / train, _read_json(root / train), "categories", ("id", "name"))
        if not cats:
            raise UserError(f"{root / train}: no 'categories' in the annotation file")
        return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    names = set()
    for xml_file in sorted((root / "Annotations").glob("*.xml")):
        try:
            names.update(o.findtext("name", "").strip() for o in ET.parse(xml_file).getroot().iter("object"))
        except ET.ParseError:
            continue
    if not names:
        raise UserError(f"data.classes: not given, and no object names found in {root / 'Annotations'}")
    return sorted(names - {""})


def _image_size(path: Path, out: DetectionSplits) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return upright_size(im)  # the boxes are drawn on the photo as shown: turned by its EXIF
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):  # listed as skipped, not a traceback
        out.skipped.append(str(path))
        return None


def _boxed(path: Path, size, boxes: list, labels: list, out: DetectionSplits) -> BoxedImage:
    w, h = size
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    out.dropped_boxes += int((~keep).sum())
    return BoxedImage(str(path), w, h, b[keep], torch.tensor(labels, dtype=torch.int64).reshape(-1)[keep])


def _yolo_split(root: Path, split: str, classes: list[str], out: DetectionSplits) -> list[BoxedImage]:
    """images/<split>/x.jpg with labels/<split>/x.txt (`class cx cy w h` or a polygon, normalised); a missing label
    file is an image without objects. `split` may also be given as images/<split>."""
    split = split.removeprefix("images/")
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    if not img_dir.is_dir():
        raise UserError(f"YOLO split not found: {img_dir} (expected images/<split> and labels/<split>)")
    items = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not hidden(p.name)):
        size = _image_size(img, out)
        if size is None:
            continue
        boxes, labels = [], []
        lbl = lbl_dir / (img.stem + ".txt")
        if lbl.is_file():
            try:
                rows = [line.split() for line in lbl.read_text(encoding=TEXT_ENCODING).splitlines() if line.strip()]
                for n, r in enumerate(rows, 1):
                    c = int(r[0])
                    if not 0 <= c < len(classes):
                        raise ValueError(f"class {c} outside 0..{len(classes) - 1}")
                    x1, y1, x2, y2 = yolo_box(r[1:], n)
                    boxes.append([x1 * size[0], y1 * size[1], x2 * size[0], y2 * size[1]])
                    labels.append(c)
            except (ValueError, IndexError) as e:
                out.skipped.append(f"{lbl}: {e}")
                continue
        items.append(_boxed(img, size, boxes, labels, out))
    return items


def yolo_box(values: list[str], line: int) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2), normalised, from a YOLO label row after its class: `cx cy w h`, or a segmentation
    polygon `x1 y1 x2 y2 x3 y3 ...` (YOLO-seg, as Ultralytics exports it), boxed by its points' extent. A
    polygon was read as its first four numbers, a box in the wrong place."""
    xy = [float(v) for v in values]
    if len(xy) == 4:
        cx, cy, w, h = xy
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if len(xy) >= 6 and len(xy) % 2 == 0:
        xs, ys = xy[0::2], xy[1::2]
        return min(xs), min(ys), max(xs), max(ys)
    raise ValueError(
        f"line {line}: {len(xy)} numbers after the class; a box has 4 (cx cy w h), a polygon 3 or more x y pairs"
    )


def _read_json(path: Path) -> dict:
    existing_file(path, "COCO annotation file")
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def coco_entries(path: Path, coco: dict, section: str, keys: tuple[str, ...]) -> list[dict]:
    """A COCO file's `section` (images, annotations, categories), each entry holding `keys`: a tool's export
    that left a field out ended in a KeyError traceback."""
    entries = coco.get(section, [])
    if not isinstance(entries, list):
        raise UserError(f"{path}: '{section}' is not a list")
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise UserError(f"{path}: {section}[{i}] has no {', '.join(map(repr, missing))}")
    return entries


def _coco_split(root: Path, split: str, classes: list[str], out: DetectionSplits) -> list[BoxedImage]:
    """`split` is an instances JSON relative to data.path; images are found by file_name next to it,
    in an `images/` folder beside it, or under data.path. Crowd annotations are left out."""
    ann_file = root / split
    coco = _read_json(ann_file)
    categories = coco_entries(ann_file, coco, "categories", ("id", "name"))
    cat_index = {c["id"]: classes.index(c["name"]) for c in categories if c["name"] in classes}
    anns: dict[int, list] = {}
    for i, a in enumerate(coco_entries(ann_file, coco, "annotations", ("image_id", "category_id", "bbox"))):
        if a.get("iscrowd", 0) or a["category_id"] not in cat_index:
            continue
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            raise UserError(f"{ann_file}: annotations[{i}].bbox is {box!r}; COCO boxes are [x, y, width, height]")
        x, y, w, h = box
        anns.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], cat_index[a["category_id"]]))
    items = []
    for im in coco_entries(ann_file, coco, "images", ("id", "file_name")):
        path = next(
            (
                d / im["file_name"]
                for d in (ann_file.parent, ann_file.parent / "images", root, root / "images")
                if (d / im["file_name"]).is_file()
            ),
            None,
        )
        if path is None:
            out.skipped.append(f"{im['file_name']} (listed in {ann_file}, not found)")
            continue
        size = (im["width"], im["height"]) if "width" in im and "height" in im else _image_size(path, out)
        if size is None:
            continue
        pairs = anns.get(im["id"], [])
        items.append(_boxed(path, size, [b for b, _ in pairs], [c for _, c in pairs], out))
    return items


def _voc_split(root: Path, split: str, classes: list[str], out: DetectionSplits) -> list[BoxedImage]:
    """Pascal VOC: ImageSets/Main/<split>.txt lists ids; Annotations/<id>.xml; JPEGImages/<id>.jpg.
    VOC boxes are 1-based inclusive pixels; `difficult` objects are kept (VOC's own metric ignores them)."""
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise UserError(f"VOC split not found: {ids_file}")
    items = []
    for image_id in read_utf8(ids_file).split():
        xml_file = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml_file).getroot()
        except (OSError, ET.ParseError) as e:
            out.skipped.append(f"{xml_file}: {e}")
            continue
        path = root / "JPEGImages" / (tree.findtext("filename") or f"{image_id}.jpg")
        if not path.is_file():
            path = root / "JPEGImages" / f"{image_id}.jpg"
        size = _image_size(path, out)
        if size is None:
            continue
        boxes, labels = [], []
        try:
            for obj in tree.iter("object"):
                name = obj.findtext("name", "").strip()
                bb = obj.find("bndbox")
                if name not in classes or bb is None:
                    continue
                corners = ("xmin", "ymin", "xmax", "ymax")
                boxes.append([float(bb.findtext(k)) - (1 if k in ("xmin", "ymin") else 0) for k in corners])
                labels.append(classes.index(name))
        except (TypeError, ValueError):  # a corner missing or not a number: float()'s traceback
            out.skipped.append(f"{xml_file}: an object's bndbox needs numbers xmin, ymin, xmax, ymax")
            continue
        items.append(_boxed(path, size, boxes, labels, out))
    return items
