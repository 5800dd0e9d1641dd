"""How an image classifier holds up when its inputs are pushed: `nnrecipe evaluate --attack` and `--corruptions`.

Attacks are Captum's FGSM and PGD in pixel space (engine/adversarial.py: an L-infinity ball of `epsilon`
around each image in [0, 1], 2/255 = two grey levels; PGD `steps` steps from a random start). Corruptions are torchvision transforms v2 at three severities each
(Gaussian noise, Gaussian blur, brightness, JPEG), in the spirit of CIFAR-10-C. The family provides the
images and labels (`TaskFamily.robust_subject`); this module only perturbs and scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnrecipe.engine.adversarial import METHODS as ATTACKS
from nnrecipe.engine.adversarial import PixelModel, adversarial
from nnrecipe.engine.config import fraction
from nnrecipe.errors import UserError

CORRUPTIONS: dict[str, tuple[float, ...]] = {  # name -> its three severities
    "gaussian_noise": (0.04, 0.08, 0.12),  # sigma, pixels in [0, 1]
    "gaussian_blur": (0.6, 1.0, 1.5),  # sigma, 5x5 kernel
    "brightness": (1.3, 1.6, 1.9),  # factor
    "jpeg": (30, 15, 5),  # quality
}


def parse_epsilons(text: str) -> list[float]:
    """'2/255,8/255' or '0.01' -> pixel-space radii in (0, 1)."""
    out = []
    for item in text.split(","):
        value = fraction(item)
        if value is None or not 0 < value < 1:
            raise UserError(f"--epsilon: radii in (0, 1) such as 2/255 or 0.03, comma-separated (got {item!r})")
        out.append(value)
    return out


def corrupt(x: torch.Tensor, name: str, severity: float) -> torch.Tensor:
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    if name == "gaussian_noise":
        return v2.GaussianNoise(sigma=severity, clip=True)(x)
    if name == "gaussian_blur":
        return TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[severity, severity])
    if name == "brightness":
        return TF.adjust_brightness(x, severity)
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (for TorchCodec) once per image
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return TF.jpeg((x * 255).round().to(torch.uint8), quality=int(severity)).float() / 255


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return (pred == y).float().mean().item()


def attack_table(model: PixelModel, x: torch.Tensor, y: torch.Tensor, methods: list[str], epsilons: list[float],
                 steps: int, batch: int = 128, seed: int = 0) -> tuple[list[dict[str, Any]], dict]:  # fmt: skip
    """Adversarial accuracy per (method, epsilon), and the first few adversarial images of each; a bar over
    the attacked batches on a terminal (PGD with many steps ran for minutes without a sign)."""
    from nnrecipe.engine.progress import progress

    rows, examples = [], {}
    starts = range(0, len(x), batch)
    with progress("attacking", len(methods) * len(epsilons) * len(starts)) as advance:
        for method in methods:
            for eps in epsilons:
                torch.manual_seed(seed)  # PGD's random start
                parts = []
                for i in starts:
                    parts.append(adversarial(model, x[i : i + batch], y[i : i + batch], method, eps, steps))
                    advance()
                adv = torch.cat(parts)
                rows.append({"method": method, "epsilon": eps, "accuracy": accuracy(model, adv, y)})
                examples[(method, eps)] = adv[:6]
    return rows, examples


def corruption_table(model: PixelModel, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for name, severities in CORRUPTIONS.items():
        for level, severity in enumerate(severities, start=1):
            torch.manual_seed(seed)  # the noise
            rows.append({"corruption": name, "severity": level, "setting": severity,
                         "accuracy": accuracy(model, corrupt(x, name, severity), y)})  # fmt: skip
    return rows


def evaluate_robustness(run: Any, split: str | None, attacks: list[str], epsilons: list[float] | None = None,
                        steps: int = 20, corruptions: bool = False, limit: int = 1000) -> dict[str, Any]:  # fmt: skip
    """Clean accuracy beside adversarial and corrupted accuracy on (up to `limit`) images of a split (the
    defaults here are `nnrecipe evaluate`'s: radii 2/255 and 8/255, PGD of 20 steps, 1000 images);
    runs/<run>/robustness/report.md + report.json + PNGs."""
    from nnrecipe.tasks.family import family_of

    epsilons = [2 / 255, 8 / 255] if epsilons is None else epsilons

    bad = [a for a in attacks if a not in ATTACKS]
    if bad:
        raise UserError(f"--attack: one or more of {', '.join(ATTACKS)} (got {', '.join(bad)})")
    if steps < 1:
        raise UserError(f"--steps: at least 1 (got {steps})")
    if limit < 1:  # 0 was torch.cat's traceback, a negative count NumPy's
        raise UserError(f"--limit: at least 1 image (got {limit})")
    s = family_of(run).require("robustness").robust_subject(run, split, limit)
    model = PixelModel(s.model.eval(), s.normalize)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = s.images.float() / 255, s.labels
    report: dict[str, Any] = {"split": s.split, "images": len(y), "clean_accuracy": accuracy(model, x, y)}
    folder = run.dir / "robustness"
    folder.mkdir(exist_ok=True)
    if attacks:
        rows, examples = attack_table(model, x, y, attacks, epsilons, steps)
        report |= {"attacks": rows, "pgd_steps": steps}
        report["plots"] = [str(plot_adversarial(model, x[:6], y[:6], examples, s.classes, folder / "adversarial.png"))]
    if corruptions:
        report["corruptions"] = corruption_table(model, x, y)
        report.setdefault("plots", []).append(str(plot_corruptions(report, folder / "corruptions.png")))
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(robustness_markdown(run, report))
    return report


def robustness_markdown(run: Any, r: dict[str, Any]) -> str:
    md = [f"# Robustness: {run.dir.name}", "",
          f"{r['images']:,} {r['split']} images; clean accuracy **{r['clean_accuracy']:.4f}**.", ""]  # fmt: skip
    if "attacks" in r:
        md += [f"Adversarial accuracy (L-inf ball in pixel space; PGD: {r['pgd_steps']} steps, random start):", "",
               "| attack | epsilon | accuracy |", "|---|---|---:|"]  # fmt: skip
        md += [f"| {a['method']} | {a['epsilon'] * 255:.3g}/255 | {a['accuracy']:.4f} |" for a in r["attacks"]]
        md += ["", "![adversarial](adversarial.png)", ""]
    if "corruptions" in r:
        md += ["Accuracy under corruptions (torchvision transforms v2), severities 1-3:", "",
               "| corruption | 1 | 2 | 3 |", "|---|---:|---:|---:|"]  # fmt: skip
        for name in CORRUPTIONS:
            accs = [c["accuracy"] for c in r["corruptions"] if c["corruption"] == name]
            md.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
        md += ["", "![corruptions](corruptions.png)", ""]
    return "\n".join(md)


def plot_adversarial(model: PixelModel, x: torch.Tensor, y: torch.Tensor, examples: dict, labels: list[str],
                     path: Path) -> Path:  # fmt: skip
    """Rows: the clean images, then each (attack, epsilon); titles: the prediction (red when wrong)."""
    from nnrecipe.reporting.plots import plt

    rows = [("clean", x), *((f"{m} {e * 255:.3g}/255", adv) for (m, e), adv in examples.items())]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.6 * len(x), 1.8 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        with torch.no_grad():
            pred = model(images).argmax(1)
        for c in range(len(x)):
            ax = axes[r][c]
            img = images[c].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_title(labels[pred[c]], fontsize=8, color="k" if pred[c] == y[c] else "r")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_corruptions(report: dict[str, Any], path: Path) -> Path:
    from nnrecipe.reporting.plots import plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in CORRUPTIONS:
        accs = [c["accuracy"] for c in report["corruptions"] if c["corruption"] == name]
        ax.plot([0, 1, 2, 3], [report["clean_accuracy"], *accs], "o-", label=name)
    ax.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1), xticks=[0, 1, 2, 3])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
