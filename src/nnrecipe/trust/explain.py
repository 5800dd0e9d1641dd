"""`nnrecipe explain`: why an image classifier decided, with Captum, and whether the explanation is honest
(text and NER: trust/text_explain.py).

Methods (Captum): integrated gradients (from a black image), saliency (|gradient|), occlusion (a sliding
patch of the black image) and Grad-CAM on the last convolution (found automatically), each reduced to one
heat map per image (summed |attribution| over channels; Grad-CAM's positive part, upsampled) and written as
a PNG overlay. `--check` runs the two sanity tests peers do not ship:

- model randomisation (Adebayo et al., 2018): the same method on the same images with the network's
  weights re-initialised must give different maps (Spearman rank correlation below 0.5), or the method
  shows the input, not the model;
- deletion (Samek et al., 2017): accuracy as the most-attributed pixels are blacked out, 0-50% in steps,
  against blacking out random pixels; a faithful map falls faster (a smaller area under the curve).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrecipe.data.images import image_inputs
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError

METHODS = ("gradcam", "ig", "occlusion", "saliency")
CHUNK = 16  # images explained together
IG_BATCH = 64  # inputs x steps in one pass of integrated gradients
RANDOMISATION_BOUND = 0.5  # rank correlation above this: the map barely depends on the weights


def last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("--method gradcam: this model has no convolution (use ig, occlusion or saliency)")
    return convs[-1]


def attribute(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, black: torch.Tensor
) -> torch.Tensor:
    """One non-negative heat map (N x H x W) per input for the `target` classes. `black`: the normalised
    black image (the baseline of integrated gradients and occlusion)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    model.eval()
    if method == "gradcam":
        cam = LayerGradCam(model, last_conv(model)).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()
    if method == "ig":  # the 32 steps of every input in passes of IG_BATCH: all at once, N x 32 images in one batch
        a = IntegratedGradients(model).attribute(
            x, baselines=black.expand_as(x), target=target, n_steps=32, internal_batch_size=IG_BATCH
        )
    elif method == "saliency":
        # an input that asks for its gradient (Captum set it itself, with a warning on every call)
        a = Saliency(model).attribute(x.detach().requires_grad_(), target=target, abs=True)
    elif method == "occlusion":
        size = x.shape[-1]
        window = max(2, size // 8)
        a = Occlusion(model).attribute(
            x, target=target, baselines=black.expand_as(x)[:1], sliding_window_shapes=(x.shape[1], window, window),
            strides=(x.shape[1], max(1, window // 2), max(1, window // 2)),
        )  # fmt: skip
    else:
        raise UserError(f"--method: one of {', '.join(METHODS)} (got {method!r})")
    return a.detach().abs().sum(1)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean Spearman correlation between paired maps (a constant map correlates 0 with anything)."""
    from scipy.stats import spearmanr

    values = []
    for p, q in zip(a.flatten(1).numpy(), b.flatten(1).numpy()):
        values.append(0.0 if p.std() == 0 or q.std() == 0 else float(spearmanr(p, q).statistic))
    return float(np.mean(values))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every layer's weights re-initialised (its architecture kept)."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh.eval()


Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def randomisation_check(model: nn.Module, x: torch.Tensor, target: torch.Tensor, explain: Explainer) -> dict[str, Any]:
    rho = rank_correlation(explain(model, x, target), explain(randomised(model), x, target))
    return {"rank_correlation": rho, "bound": RANDOMISATION_BOUND, "passed": rho < RANDOMISATION_BOUND}


@torch.no_grad()
def deletion_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, black: torch.Tensor,
                   fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Accuracy as the top-`fraction` pixels by `maps` become black, and for comparison the least attributed
    pixels (removed in the same coherent shapes: blacking out scattered random pixels is noise the network
    never saw, which can hurt more than a faithful map's region) and random pixels."""
    n, h, w = maps.shape
    order = maps.flatten(1).argsort(1, descending=True)
    rand = torch.rand(n, h * w, generator=torch.Generator().manual_seed(seed)).argsort(1)
    out: dict[str, list[float]] = {"fractions": list(fractions), "attributed": [], "least": [], "random": []}
    for f in fractions:
        k = int(round(f * h * w))
        for name, idx in (("attributed", order), ("least", order.flip(1)), ("random", rand)):
            mask = torch.zeros(n, h * w, dtype=torch.bool)
            mask.scatter_(1, idx[:, :k], True)
            xs = torch.where(mask.view(n, 1, h, w), black.expand_as(x), x)
            out[name].append((model(xs).argmax(1) == y).float().mean().item())
    step = fractions[1] - fractions[0]
    for name in ("attributed", "least", "random"):
        out[f"area_{name}"] = float(np.trapezoid(out[name], dx=step))
    return out


def check_table(checks: dict[str, Any]) -> list[str]:
    """The checks' markdown table: one row per method."""
    md = ["| method | randomisation: rank correlation (pass < 0.5) | deletion AUC: most attributed first | "
          "least attributed first | random |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for method, c in checks.items():
        r, d = c["randomisation"], c["deletion"]
        verdict = "pass" if r["passed"] else "**fail**"
        md.append(f"| {method} | {r['rank_correlation']:.3f} ({verdict}) | {d['area_attributed']:.4f} | "
                  f"{d['area_least']:.4f} | {d['area_random']:.4f} |")  # fmt: skip
    return md


def overlay(image: np.ndarray, heat: np.ndarray, path: Path, title: str) -> Path:
    """The image (uint8 C x H x W) in grey with the heat map over it, as a PNG."""
    from nnrecipe.reporting.plots import plt

    grey = image.mean(0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3.2))
    a.imshow(image.transpose(1, 2, 0).squeeze(), cmap="gray" if image.shape[0] == 1 else None)
    a.set_title("input")
    b.imshow(grey, cmap="gray")
    b.imshow(heat, cmap="jet", alpha=0.5)
    b.set_title(title, fontsize=9)
    for ax in (a, b):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def explain_run(
    run: Any, inputs: list[str], methods: list[str] | None = None, target: str | None = None,
    out: Path | None = None, check: bool = False, check_examples: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """Explanations of `inputs` (image files, or texts for a text family) for each method (default: Grad-CAM
    for images, integrated gradients for text), and with `check` the randomisation and deletion checks on
    validation examples (runs/<run>/explain/report.md)."""
    from nnrecipe.tasks.family import TextExplainSubject, family_of

    s = family_of(run).require("explain").explain_subject(run)
    if out is not None:
        check_out_folder(Path(out), run.dir, [] if isinstance(s, TextExplainSubject) else inputs)
    if isinstance(s, TextExplainSubject):
        from nnrecipe.trust.text_explain import explain_texts

        return explain_texts(run, s, inputs, methods or ["ig"], target, out, check, check_examples)
    methods = methods or ["gradcam"]
    check_request(s, methods, target)
    rows: list[dict[str, Any]] = []
    if inputs:
        files = image_inputs(inputs)
        stems, folder = distinct_stems(files), Path(out or run.dir / "explain")
        folder.mkdir(parents=True, exist_ok=True)
        # A chunk of files at a time: a folder was decoded and attributed as one batch (out of memory)
        with progress("explaining", len(files)) as advance:
            for first in range(0, len(files), CHUNK):
                x, raw = s.load(files[first : first + CHUNK])
                for row, heat in image_explanations(s, x, methods, target):
                    i = first + row.pop("input")
                    name = f"{stems[i]}.{row['method']}.{row['target']}.png"
                    png = overlay(raw[i - first].numpy(), heat.numpy(), folder / name,
                                  f"{row['method']}: {row['target']} (p {row['probability']:.2f})")  # fmt: skip
                    rows.append({"file": files[i], **row, "png": str(png)})
                advance(len(x))
        rows.sort(key=lambda r: methods.index(r["method"]))  # by method, then file (a stable sort), as before
    result: dict[str, Any] = {"explanations": rows}
    if check:
        result["checks"] = write_checks(run, s, methods, check_examples)
    return result


def check_out_folder(out: Path, run_dir: Path, images: list[str]) -> None:
    """--out is not a run's own folder (only its explain/), nor the folder of an input image, nor an input
    folder or one inside it: its overlays would sit among the inputs, read as images by the next run there."""
    target = out.resolve()
    if target.is_relative_to(run_dir.resolve()) and not target.is_relative_to((run_dir / "explain").resolve()):
        raise UserError(f"--out {out}: inside the run {run_dir}; leave --out out for {run_dir / 'explain'}")
    for item in map(Path, images):
        folder = item.resolve() if item.is_dir() else item.resolve().parent
        if target.is_relative_to(folder) if item.is_dir() else target == folder:
            raise UserError(f"--out {out}: among the inputs ({folder}); the overlays would be read as images next "
                            "time: give a folder outside it")  # fmt: skip


def distinct_stems(files: list[str]) -> list[str]:
    """A name per file for its overlays: the file's stem, with its folder's name in front where two files
    share a stem (a/1.png and b/1.png wrote the same overlay), and a number where that is not enough."""
    stems = [Path(f).stem for f in files]
    stems = [f"{Path(f).parent.name}-{stem}" if stems.count(stem) > 1 else stem for f, stem in zip(files, stems)]
    return [f"{stem}-{i}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def check_request(
    s: Any, methods: list[str], target: str | None, allowed: tuple[str, ...] = METHODS, kind: str = ""
) -> None:
    """A request's methods among `allowed` and its target among the subject's labels, or one line saying not."""
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise UserError(f"--method: {kind}one or more of {', '.join(allowed)} (got {', '.join(bad) or 'none'})")
    if target is not None and target not in s.labels:
        raise UserError(f"--target: {target!r} is not one of this run's labels ({', '.join(s.labels)})")


def image_explanations(s: Any, x: torch.Tensor, methods: list[str], target: str | None):
    """(row, heat map H x W) per method and image of the batch `x`: the row names the input's index, the
    method, the target (default: the predicted label), the prediction and the target's probability."""
    with torch.no_grad():
        probs = s.model(x).float().softmax(1)
    pred = probs.argmax(1)
    t = torch.full_like(pred, s.labels.index(target)) if target is not None else pred
    out = []
    for method in methods:
        maps = attribute(s.model, x, t, method, s.black)
        for i in range(len(x)):
            row = {"input": i, "method": method, "target": s.labels[t[i]], "predicted": s.labels[pred[i]],
                   "probability": float(probs[i, t[i]])}  # fmt: skip
            out.append((row, maps[i]))
    return out


def explain_decoded(s: Any, items: list[Any], method: str | None, target: str | None) -> list[dict[str, Any]]:
    """What `POST /v1/explain` answers for a batch of decoded inputs (uint8 images at the training size, or
    texts): one row per input and explanation, an image's heat map as a base64 grey-level PNG (white = most
    attributed, scaled to its own maximum), a text's as word attributions."""
    from nnrecipe.tasks.family import TextExplainSubject

    if isinstance(s, TextExplainSubject):
        from nnrecipe.trust.text_explain import check_text_request, text_explanations

        methods = [method or "ig"]
        check_text_request(s, methods, target)
        return [
            {"input": i, **row} for i, text in enumerate(items) for row in text_explanations(s, text, methods, target)
        ]
    methods = [method or "gradcam"]
    check_request(s, methods, target)
    x = s.prepare(torch.stack(items))
    return [row | {"heatmap_png": heat_png(heat)} for row, heat in image_explanations(s, x, methods, target)]


def heat_png(heat: torch.Tensor) -> str:
    import base64
    import io

    from PIL import Image

    top = float(heat.max())
    grey = (heat / top * 255 if top > 0 else heat * 0).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_checks(run: Any, s: Any, methods: list[str], n: int) -> dict[str, Any]:
    import json

    x, y = s.sample(n)
    checks = {}
    for method in methods:
        explain = lambda model, xs, t, m=method: attribute(model, xs, t, m, s.black)  # noqa: E731
        maps = explain(s.model, x, y)
        checks[method] = {
            "randomisation": randomisation_check(s.model, x, y, explain),
            "deletion": deletion_curve(s.model, x, y, maps, s.black),
        }
    folder = run.dir / "explain"
    folder.mkdir(exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"examples": len(y), "checks": checks}, indent=2))
    md = [f"# Explanation checks: {run.dir.name} ({len(y)} validation images, their true labels as targets)", "",
          *check_table(checks)]  # fmt: skip
    md += ["", "Deletion: accuracy as the top 0-50% of pixels by the map (or the least attributed, or random pixels) "
           "turn black; the area under that curve is smaller for a map that finds what the model uses. Compare it "
           "with the least attributed first above all: scattered random black pixels are noise the network never "
           "saw and can hurt more than any region.", ""]  # fmt: skip
    (folder / "report.md").write_text("\n".join(md))
    return checks
