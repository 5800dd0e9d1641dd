"""Image classification: decoded-once image sets, batch augmentation, CNNs/ResNets/timm/torchvision models,
cross-entropy on the shared engine, accuracy reports, ONNX/TorchScript export, serving and the doctor.

Everything a later `evaluate`, `predict`, `export` or `serve` needs (classes, channels, size,
normalisation) is the run's spec in run.json, so inference depends on the run directory alone.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.augment import Normalizer
from nnrecipe.data.images import ImageSet, conform, image_inputs, read_image, read_image_tree
from nnrecipe.data.loader import TensorLoader
from nnrecipe.data.splits import spread_sample
from nnrecipe.engine.adversarial import PixelModel, adversarial
from nnrecipe.engine.checkpoint import load_weights, save_checkpoint
from nnrecipe.engine.freezing import FreezeBackbone
from nnrecipe.engine.loop import console
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError, existing_folder
from nnrecipe.models import head_parameter_names
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.reporting.plots import plot_confusion, plot_image_grid
from nnrecipe.runs import Run
from nnrecipe.tasks import image_continual as continual
from nnrecipe.tasks import outputs
from nnrecipe.tasks.continual_parts import class_stages, fisher_information, save_fisher
from nnrecipe.tasks.family import (
    DoctorPlan,
    ExplainSubject,
    Inference,
    LogitsExport,
    Metric,
    RobustSubject,
    Splits,
    Stages,
    register_family,
)
from nnrecipe.tasks.image_doctor import plan as doctor_plan
from nnrecipe.tasks.image_inputs import (
    ImageSpec,
    eval_loader,
    image_spec,
    initial_model,
    input_pipeline,
    loader_workers,
    splits_of,
)
from nnrecipe.tasks.image_recipe import ImageRecipe
from nnrecipe.tasks.serving import ImageInputs, Predictor, autocast, decode_image, ort_session
from nnrecipe.tasks.supervised import Setup, SupervisedFamily, plot_paths, reliability_plot, split_tag


def read_files(paths: list[str], spec: ImageSpec) -> torch.Tensor:
    """Image files as one uint8 batch, each converted and resized like the run's training images."""
    return torch.stack(
        [conform(read_image(Path(p), spec.channels).unsqueeze(0), spec.channels, spec.image_size)[0] for p in paths]
    )


def continued_spec(spec: ImageSpec, old: ImageSpec) -> ImageSpec:
    """A continued run reads images as the run it continues did (its normalisation) with the grown class list."""
    if (old.channels, old.image_size, old.model) != (spec.channels, spec.image_size, spec.model):
        raise UserError(
            f"continual.from_run: that run's model reads {old.channels}x{old.image_size}x{old.image_size} images "
            f"with {old.model}; this recipe: {spec.channels}x{spec.image_size}x{spec.image_size} with {spec.model}"
        )
    return replace(spec, mean=old.mean, std=old.std)


class ImageClassifier:
    """The engine's TrainTask for cross-entropy classification."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing), len(y)

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        probs, labels = predict_probs(model, loader)
        loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item()
        return {"loss": loss, "accuracy": (probs.argmax(1) == labels).float().mean().item()}


class AdversarialClassifier(ImageClassifier):
    """`train.adversarial`: each (augmented, normalised) batch is attacked in pixel space (FGSM or PGD, the
    network in eval mode so the attack moves no BatchNorm statistics) and trained on, in one forward beside
    the clean batch (half the loss each) or alone."""

    def __init__(self, label_smoothing: float, cfg, mean: list[float], std: list[float]):
        super().__init__(label_smoothing)
        self.cfg, self.normalize = cfg, Normalizer(mean, std)
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        bare = getattr(model, "module", model)  # DDP's wrapper syncs gradients: attack the network itself
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        pixels = (x.detach().float() * std + mean).clamp(0, 1)
        was = bare.training
        bare.eval()
        adv = adversarial(
            PixelModel(bare, self.normalize), pixels, y, self.cfg.method, self.cfg.epsilon, self.cfg.steps
        )
        bare.train(was)
        attacked = ((adv - mean) / std).to(x.dtype)
        if self.cfg.clean:
            attacked, y = torch.cat([x, attacked]), torch.cat([y, y])
        return F.cross_entropy(model(attacked), y, label_smoothing=self.label_smoothing), len(batch[1])


@torch.no_grad()
def predict_probs(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (float32, CPU) and labels for every batch of `loader`."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in loader.batches():
        probs.append(model(x).float().softmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


@register_family
class ImageClassification(SupervisedFamily):
    name = "image_classification"
    recipe = ImageRecipe
    metric = Metric("accuracy", "max")
    output = outputs.CLASSIFICATION
    card_metrics = ("accuracy", "examples")
    ensemble_inputs = ("classes", "channels", "image_size", "mean", "std")  # members' architectures may differ
    adversarial_methods = ("fgsm", "pgd")  # in pixel space, an L-infinity ball
    adversarial_epsilon = (8 / 255, 1.0)

    def splits(self, recipe: ImageRecipe) -> Splits:
        prior = continual.earlier(recipe)
        return splits_of(recipe, ImageSpec(**prior.spec()).classes if prior is not None else None)

    def setup(self, recipe: ImageRecipe, splits: Splits, acc, run: Run) -> Setup:
        spec = image_spec(recipe, splits)
        prior, memory = continual.earlier(recipe), None
        if prior is not None:
            spec = continued_spec(spec, ImageSpec(**prior.spec()))
            if recipe.continual.strategy == "replay":
                memory = continual.read_memory(prior, spec.classes)
        batched = memory is not None and recipe.continual.replay_batch is not None
        train_set = splits.train if memory is None or batched else splits.train.concat(memory)
        t = recipe.train
        train_loader = TensorLoader(
            train_set.images,
            train_set.labels,
            t.batch_size,
            device=acc.device,
            shuffle=True,
            seed=t.seed,
            prepare=input_pipeline(recipe, spec, augment=True),
            rank=acc.process_index,
            world_size=acc.num_processes,
            workers=loader_workers(recipe),
            rehearsal=(memory.tensor(), memory.labels, recipe.continual.replay_batch) if batched else None,
        )
        val_loader = eval_loader(recipe, spec, splits.val, acc.device) if splits.val is not None else None
        model, old_model = initial_model(recipe, spec), None
        if prior is not None:
            old = load_weights(prior.best_checkpoint)
            continual.grown_head(model, old)
            if recipe.continual.strategy == "lwf":
                old_model = ImageSpec(**prior.spec()).build_model()
                old_model.load_state_dict(old)
                old_model.to(acc.device)
        callbacks, backbone = [], set()
        if recipe.model.freeze == "backbone":
            head = head_parameter_names(model)
            backbone = {n for n, _ in model.named_parameters()} - head
            callbacks.append(FreezeBackbone(head, recipe.model.unfreeze_at_epoch))
        n_params = sum(p.numel() for p in model.parameters())
        n_val, n_test = (len(p) if p is not None else 0 for p in (splits.val, splits.test))
        summary = (
            f"{recipe.model.name}: {n_params:,} parameters; {len(splits.train):,} train / {n_val:,} val / {n_test:,} test "
            f"images ({spec.channels}x{spec.image_size}x{spec.image_size})"
        ) + continual.describe(recipe, prior, memory)
        return Setup(
            model=model,
            optimizer=build_optimizer(model, recipe.optim, backbone, recipe.model.backbone_lr_scale),
            task=continual.continual_task(
                recipe,
                ImageClassifier(t.label_smoothing)
                if t.adversarial is None
                else AdversarialClassifier(t.label_smoothing, self.adversarial_of(recipe), spec.mean, spec.std),
                model,
                old_model,
                prior,
                acc.device,
                fisher_of=lambda: self.fisher_of(prior),
            ),  # fmt: skip
            train_loader=train_loader,
            val_loader=val_loader,
            spec=asdict(spec),
            summary=summary,
            callbacks=callbacks,
            meta={"continues": str(prior.dir)} if prior is not None else {},
            keep={"splits": splits, "memory": memory, "prior": prior},
        )

    def finish(self, run: Run, recipe: ImageRecipe, setup: Setup) -> None:
        """A continual strategy leaves what the next stage needs: the replay memory, the Fisher information."""
        c, keep = recipe.continual, setup.keep
        if c.strategy not in ("replay", "ewc"):
            return
        inf = self.trained(run)
        train = keep["splits"].train
        if c.strategy == "replay":
            pool = train if keep["memory"] is None else train.concat(keep["memory"])
            pipeline = input_pipeline(recipe, inf.spec, augment=False)
            continual.save_memory(run, inf.model, pipeline, pool, inf.spec.classes, c.memory, c.selection)
        else:
            loader = eval_loader(recipe, inf.spec, train, "cpu")
            save_fisher(run, inf.model, loader, keep["prior"], continual.IMAGES)

    def fisher_of(self, run: Run) -> dict[str, torch.Tensor]:
        """The Fisher information of a run's model on its own training images (no augmentation)."""
        recipe, inf = run.recipe(), self.trained(run)
        loader = eval_loader(recipe, inf.spec, self.splits(recipe).train, "cpu")
        return fisher_information(inf.model, loader, continual.IMAGES)

    def explain_subject(self, run: Run) -> ExplainSubject:
        """Image files in (resized like the training images), normalised inputs out; validation images to check."""
        recipe = run.recipe()
        inf = self.inference(run)
        spec, prepare = inf.spec, input_pipeline(recipe, inf.spec, augment=False)

        def load(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            raw = read_files(paths, spec)
            return prepare(raw, 0), raw

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            splits = self.splits(recipe)
            part = splits.val if splits.val is not None else splits.test
            part = part.subset(spread_sample(len(part), n))
            return prepare(part.tensor(), 0), part.labels

        black = prepare(torch.zeros(1, spec.channels, spec.image_size, spec.image_size, dtype=torch.uint8), 0)
        return ExplainSubject(inf.model, spec.classes, load, black, sample, lambda raw: prepare(raw, 0))

    def example_keys(self, run: Run, split: str) -> list[str]:
        part = self.splits(run.recipe()).named(split)
        if not part.paths:
            raise UserError(f"--groups: this run's images come from {run.recipe().data.source}, not files; group "
                            "them by path with an imagefolder run")  # fmt: skip
        return [str(p) for p in part.paths]

    def robust_subject(self, run: Run, split: str | None = None, limit: int = 1000) -> RobustSubject:
        """The first `limit` images of a split (test, else val), as decoded, with the run's normalisation."""
        recipe, inf = run.recipe(), self.inference(run)
        splits = self.splits(recipe)
        name, part = (split, splits.named(split)) if split else splits.reported()
        part = part.subset(spread_sample(len(part), limit))
        normalize = Normalizer(inf.spec.mean, inf.spec.std)
        return RobustSubject(inf.model, part.tensor(), part.labels, normalize, inf.spec.classes, name)

    def probabilities(self, run: Run, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        recipe = run.recipe()
        device = self.eval_device(recipe)
        inf = self.inference(run, device)
        return predict_probs(inf.model, eval_loader(recipe, inf.spec, self.splits(recipe).named(split), device))

    def continue_from(self, recipe: ImageRecipe, path: Path) -> None:
        recipe.continual.from_run = Path(path).resolve()  # the stage's recipe.yaml works from anywhere

    def continual_stages(self, recipe: ImageRecipe) -> Stages | None:
        return class_stages(recipe)

    def continual_holdout(self, recipe: ImageRecipe) -> tuple[ImageSet, list[str]]:
        """The test (else val) images of `recipe`'s classes, and the class names their labels index."""
        splits = splits_of(recipe)
        part = splits.test if splits.test is not None else splits.val
        if part is None:
            raise UserError("continual.stages: each stage needs validation or test images to be scored on")
        return part, splits.classes

    def continual_score(self, run: Run, recipe: ImageRecipe, holdout: tuple[ImageSet, list[str]]) -> float:
        """Accuracy of the run's model on a stage's held-out images, over the run's whole head (a class it has
        not learnt yet is never right)."""
        spec = ImageSpec(**run.spec())
        part, classes = holdout
        index = torch.tensor([spec.classes.index(c) if c in spec.classes else -1 for c in classes])
        part = ImageSet(part.images, index[part.labels])
        probs, labels = predict_probs(self.inference(run).model, eval_loader(recipe, spec, part, "cpu"))
        return (probs.argmax(1) == labels).float().mean().item()

    def report(
        self, run: Run, recipe: ImageRecipe, part: ImageSet, split: str, device, source: str | None = None
    ) -> dict[str, Any]:
        inf = self.inference(run, device)
        spec = inf.spec
        probs, labels = predict_probs(inf.model, eval_loader(recipe, spec, part, device))
        pred, y = probs.argmax(1).numpy(), labels.numpy()
        summary = classification_summary(y, pred, spec.classes, probs)
        names = []
        if recipe.track.plots:
            tag = split_tag(split)
            names.append(reliability_plot(run, summary, tag))
            confusion = plot_confusion(
                summary["confusion_matrix"], spec.classes, run.plots_dir / f"confusion_{tag}.png"
            )
            names.append(str(confusion.relative_to(run.dir)))
            wrong = np.flatnonzero(pred != y)[:32]
            if len(wrong):
                titles = [f"{spec.classes[y[i]]} -> {spec.classes[pred[i]]}" for i in wrong]
                grid = plot_image_grid(part.images[wrong].numpy(), titles, run.plots_dir / f"misclassified_{tag}.png")
                names.append(str(grid.relative_to(run.dir)))
        extra = {
            "plots": plot_paths(run, *names) if recipe.track.plots else [],
            "source": source or f"{recipe.data.source} {split} split",
            "skipped_files": run.meta().get("skipped_files", []),
        }
        path = write_report(run.dir, split, summary, extra)
        console.print(
            f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} images\n" + summary_table(summary)
        )
        console.print(f"report: {path} and {run.dir / 'report.md'}; plots: {run.dir / 'plots'}", soft_wrap=True)
        return summary

    def read(self, run: Run, recipe: ImageRecipe, path: Path) -> ImageSet:
        """Any ImageFolder tree with the run's classes."""
        spec = ImageSpec(**run.spec())
        existing_folder(path, "--data: ImageFolder tree (<class>/<images>)")
        skipped: list[str] = []
        part = read_image_tree(path, spec.classes, spec.channels, spec.image_size, skipped)
        if skipped:
            console.print(f"[yellow]skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}[/yellow]")
        return part

    def trained(self, run: Run, device="cpu") -> Inference:
        """The run's best weights (the EMA copy when the run kept one), ready for eval on `device`."""
        spec = ImageSpec(**run.spec())
        model = spec.build_model()
        model.load_state_dict(load_weights(run.best_checkpoint))
        return Inference(model.to(device).eval(), spec.classes, spec)

    def predict(self, run: Run, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
        """Classify image files (a folder: the images under it): label, confidence and the top-k classes per
        file, read and classified a batch at a time (a folder of many images was decoded into one batch)."""
        recipe = run.recipe()
        files = image_inputs(inputs)
        device = self.eval_device(recipe)
        inf = self.inference(run, device)
        spec, prepare, batch = inf.spec, input_pipeline(recipe, inf.spec, augment=False), recipe.train.eval_batch_size
        rows = []
        with progress("predicting", len(files)) as advance:  # a folder of 100k images took minutes, unseen
            for i in range(0, len(files), batch):
                chunk = files[i : i + batch]
                with torch.no_grad():
                    probs = inf.model(prepare(read_files(chunk, spec).to(device), 0)).float().softmax(1).cpu()
                rows += [{"file": f, **outputs.top_k(p, spec.classes, top_k)} for f, p in zip(chunk, probs)]
                advance(len(chunk))
        return rows

    def predictor(self, run: Run, onnx_path: Path | None = None, precision: str = "fp32") -> Predictor:
        return ImagePredictor(self, run, onnx_path, precision)

    def export_subject(self, run: Run, limit: int = 512) -> LogitsExport:
        """The network on (up to `limit`) normalised validation images (test when there is no val split)."""
        recipe, inf = run.recipe(), self.inference(run)
        spec = inf.spec
        splits = self.splits(recipe)
        part = splits.val if splits.val is not None else splits.test
        if part is None:
            raise UserError(f"{run.dir}: no validation or test split to check the export on")
        part = part.subset(spread_sample(len(part), limit))
        xs, ys = zip(*eval_loader(recipe, spec, part, "cpu").batches())
        size = [spec.image_size, spec.image_size]
        facts = {
            "input": {"name": "input", "shape": ["batch", spec.channels, *size], "dtype": "float32"},
            "preprocessing": {
                "resize": size,
                "channels": spec.channels,
                "scale": "pixel / 255",
                "mean": spec.mean,
                "std": spec.std,
                "formula": "(pixel / 255 - mean) / std per channel",
            },
            "output": {"name": "logits", "shape": ["batch", len(spec.classes)], "softmax": "apply for probabilities"},
        }
        batch = {"input": torch.cat(xs)}
        return LogitsExport(
            inf.model, [batch], [torch.cat(ys)], ["input"], {"input": {0: "batch"}}, facts, spec.classes, spec.model
        )

    def prune_start(self, recipe: ImageRecipe, model: nn.Module, folder: Path) -> None:
        path = folder.with_suffix(".safetensors")
        save_checkpoint(path, model.state_dict())
        recipe.model.init_from = path
        recipe.model.freeze, recipe.model.unfreeze_at_epoch = "none", None

    def doctor(self, recipe: ImageRecipe) -> DoctorPlan:
        return doctor_plan(recipe)


class ImagePredictor(ImageInputs, Predictor):
    """Serving: image files of any size in (resized like the training images), classes out."""

    def __init__(self, family: ImageClassification, run: Run, onnx_path: Path | None, precision: str):
        inf = family.inference(run)
        self.spec, self.labels, self.model_name = inf.spec, inf.labels, inf.spec.model
        self.onnx_path, self.precision = onnx_path, "onnx" if onnx_path is not None else precision
        self.normalize = Normalizer(self.spec.mean, self.spec.std)
        if onnx_path is not None:
            self.session = ort_session(onnx_path)
        else:
            self.model = inf.model

    def decode(self, data: bytes, index: int) -> torch.Tensor:
        img = decode_image(data, index, "L" if self.spec.channels == 1 else "RGB", self.max_pixels)
        return conform(img.unsqueeze(0), self.spec.channels, self.spec.image_size)[0]

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        x = self.normalize(torch.stack(images))
        if self.onnx_path is not None:
            logits = torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0])
        else:
            with torch.no_grad(), autocast(self.precision):
                logits = self.model(x)
        return [outputs.top_k(p, self.labels) for p in logits.float().softmax(1)]

    def facts(self) -> dict[str, Any]:
        s = self.spec
        return {
            "input": {
                "kind": "image file (PNG, JPEG, ...)",
                "json": "base64 strings in 'inputs'",
                "multipart": "files",
            },
            "preprocessing": {
                "resize": [s.image_size, s.image_size],
                "channels": s.channels,
                "mean": s.mean,
                "std": s.std,
            },
        }
