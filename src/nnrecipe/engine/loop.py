"""The training loop, written once and shared by every task.

A task hands the engine a model, a loss function and an evaluation function, plus loaders that yield
ready batches for an (epoch, start batch) pair. The engine owns everything else: device placement and
mixed precision (Accelerate), accumulation, clipping, schedules, EMA, checkpoints, early stopping,
resume, Ctrl-C and divergence handling, weight averaging (SWA, last-k), logging and the progress bar.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nnrecipe.engine.averaging import has_batchnorm, recompute_batchnorm, weight_averaging
from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint, split_prefix, with_prefix
from nnrecipe.engine.config import Schedule, Train
from nnrecipe.engine.distributed import is_main_process
from nnrecipe.engine.fast_dropout import fast_dropout
from nnrecipe.engine.host_memory import keep_freed_blocks
from nnrecipe.engine.numerics import EMULATED_BF16, cpu_bf16_units
from nnrecipe.engine.optim import build_scheduler
from nnrecipe.engine.precision_probe import decide, probe_enabled
from nnrecipe.engine.recipe_changes import refuse_changes
from nnrecipe.engine.row_gradients import compact, row_gradients
from nnrecipe.engine.seeding import rng_state, set_rng_state
from nnrecipe.engine.sharding import autocast_forward, full_model_state, full_optimizer_state, load_full_state, shard
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError

# what a run says is said once: by rank 0 of a multi-process run (errors still come from every process)
console = Console(stderr=True, highlight=False, soft_wrap=True, quiet=not is_main_process())


class EpochLoader(Protocol):
    """Yields batches already on the device; the order depends only on (seed, epoch), so resume is exact."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


class TrainTask(Protocol):
    def training_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch and the number of examples in it."""

    def evaluate(self, model: nn.Module, loader: EpochLoader) -> dict[str, float]:
        """Validation metrics without prefix, e.g. {"loss": ..., "accuracy": ...}."""


class Callback:
    """Hooks into the loop; override what you need. Used for freezing schedules and by tests."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Before model.train() of each epoch (e.g. unfreeze layers)."""

    def on_train_mode(self, epoch: int, model: nn.Module) -> None:
        """Right after model.train() (e.g. keep frozen BatchNorm layers in eval mode)."""

    def after_step(self, trainer: Trainer) -> None:
        """After every micro-batch."""

    def before_zero_grad(self, trainer: Trainer) -> None:
        """After each optimizer step, while the gradients are still there (e.g. AdaLoRA's rank allocation)."""

    def after_epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After each epoch's row (train loss, validation metrics) is logged. Setting trainer.state.status to
        "pruned" ends the run there, its checkpoints written as for early stopping (a tuner's pruner)."""

    def after_evaluation(self, step: int, row: dict[str, Any]) -> bool:
        """Loops other than this one (RL's) call this after each periodic evaluation, with the step and the
        family's validation metric(s); returning True stops the run there, marked pruned."""
        return False


class Diverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class FitState:
    """Counters that a checkpoint restores; together with the RNG state they make resume exact."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch already trained (interrupted mid-epoch)
    global_step: int = 0  # optimiser steps
    epoch_loss_sum: float = 0.0
    epoch_examples: int = 0
    epoch_seconds: float = 0.0
    best_value: float | None = None
    best_epoch: int | None = None
    stop_value: float | None = None
    bad_epochs: int = 0
    status: str = "running"  # running | interrupted | finished | early_stopped | diverged


@dataclass
class FitResult:
    status: str
    last_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: str = ""  # what the best checkpoint holds, in words (the reports repeat it)
    averaged: dict[str, float] = field(default_factory=dict)  # validation metrics of the averaged weights


def choose_precision(cfg: Train, cuda: bool, cpu_bf16: bool | None) -> tuple[str, str]:
    """`train.precision` resolved for this machine, and why (printed at start). `cpu_bf16`, the family's word
    for a CPU with native bf16 units: True, its models are matmul-heavy enough for bf16 to pay; False, bf16
    costs it accuracy for too little speed (detection); None, time it. Measured: a MiniLM step 1.85x
    faster under bf16 autocast with AMX; on an AMD EPYC with AVX512-BF16 and no AMX the HF Trainer ran SST-2
    1.43x faster in bf16 (159.3 vs 111.2 samples/s, issue 17). Other models differ by model and CPU (digits
    LeNet-5 on AMX 3.3 s vs 1.7 s in fp32; the CIFAR ConvNet on the EPYC about 1.9x faster in bf16), so for
    them the answer is "probe": fp32 until `settle_precision` has timed the run's own step in both."""
    if cfg.precision == "bf16" and not cuda and not cpu_bf16_units():
        return "bf16", f"train.precision; {EMULATED_BF16}; precision: auto picks fp32 here"
    if cfg.precision != "auto":
        return cfg.precision, "train.precision"
    if cuda:
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "auto: this CUDA device supports bf16") if ok else ("fp32", "auto: no bf16 on this CUDA device")
    units = cpu_bf16_units()
    if not units:
        return "fp32", "auto: this CPU has no native bf16 units (AMX or AVX512-BF16)"
    if cpu_bf16 is None:
        return "probe", f"auto: this CPU has {units}; whether bf16 pays for this model is timed"
    if not cpu_bf16:
        return "fp32", f"auto: this task keeps fp32 even with {units}"
    return "bf16", f"auto: a matmul-heavy task on a CPU with {units}"


def describe(acc: Accelerator, strategy: str = "ddp") -> str:
    """Where a run trains, for its first console line."""
    text = f"device {acc.device}, precision {acc.mixed_precision.replace('no', 'fp32')}"
    reason = getattr(acc, "precision_reason", "")
    text += f" ({reason})" if reason else ""
    return text + (f", {acc.num_processes} processes ({strategy.upper()})" if acc.num_processes > 1 else "")


def make_accelerator(cfg: Train, cpu_bf16: bool | None = None) -> Accelerator:
    """Pick the device at run time and the precision it supports (choose_precision); refuse what it cannot
    do, clearly."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda, but no CUDA device is visible; use train.device: auto or cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device: mps, but MPS is not available here; use train.device: auto or cpu")
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    precision, reason = choose_precision(cfg, cuda, cpu_bf16)
    pending = precision == "probe"
    if pending:
        precision = "fp32"
    if precision == "fp16" and not cuda:
        raise UserError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on this machine")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # Accelerate keeps one precision per process; a process may train several models (benches, tests,
    # the doctor), so forget the previous choice. The distributed state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True whenever training runs on the CPU: Accelerate only sets up multi-process CPU training
    # (DDP over gloo, under torchrun) when told so.
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not cuda and not torch.backends.mps.is_available())
    acc = Accelerator(cpu=on_cpu, mixed_precision={"fp32": "no"}.get(precision, precision))
    if acc.device.type == "cpu":
        keep_freed_blocks()  # a step's large tensors reused from the heap, not mapped afresh each step
    acc.precision_reason, acc.precision_pending = reason, pending
    return acc


def settle_precision(acc: Accelerator, cfg: Train, model: nn.Module, task: TrainTask, loader: EpochLoader,
                     recorded: str | None = None) -> Accelerator:  # fmt: skip
    """The accelerator to train with once the model and data exist: `acc` itself unless its precision is
    pending (choose_precision's "probe"); then the precision the run recorded (a resume trains as it began),
    else what precision_probe.decide finds on the first training batch, rank 0's answer for every process."""
    if not getattr(acc, "precision_pending", False):
        return acc
    if recorded in ("fp32", "bf16"):
        precision, reason = recorded, "auto: as this run began (resume)"
    elif not probe_enabled():
        precision, reason = "fp32", "auto: not timed (NNRECIPE_PRECISION_PROBE=off)"
    elif not acc.is_main_process:
        precision, reason = "", ""  # rank 0 times it alone; its answer comes below
    else:
        batches = loader.batches(0)
        try:
            batch = next(batches)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        precision, reason = decide(model, task, batch, acc.device)
    if acc.num_processes > 1:
        precision, reason = broadcast_object_list([precision, reason], from_process=0)
    if precision == "fp32":
        acc.precision_reason, acc.precision_pending = reason, False
        return acc
    settled = make_accelerator(cfg.model_copy(update={"precision": precision}))
    settled.precision_reason = reason
    return settled


def monitor_mode(metric: str, mode: str = "auto") -> str:
    if mode != "auto":
        return mode
    return "max" if any(k in metric for k in ("acc", "f1", "map", "return", "precision", "recall")) else "min"


class Trainer:
    def __init__(
        self,
        *,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        task: TrainTask,
        train_loader: EpochLoader,
        val_loader: EpochLoader | None,
        train_cfg: Train,
        schedule_cfg: Schedule,
        run_dir: Path,
        tracker: Tracker,
        callbacks: list[Callback] = (),
        progress: bool = True,
    ):
        self.acc = accelerator
        self.cfg = train_cfg
        self.task = task
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.callbacks = list(callbacks)
        self.progress = progress
        self.steps_per_epoch = math.ceil(len(train_loader) / train_cfg.grad_accum_steps)
        # Only the model is prepared (device, DDP, autocast). Accelerate's optimizer wrapper costs ~0.1 ms a
        # step in package look-ups, which is 5% of a small convnet's step on CPU; the fp16 loss scaler it
        # would drive is driven below instead. The scheduler is not prepared either: Accelerate would step
        # it once per process.
        # train.strategy fsdp shards the model over the processes instead (engine/sharding.py).
        self.sharded = train_cfg.strategy == "fsdp" and accelerator.num_processes > 1
        self.optimizer = optimizer
        if self.sharded:
            self.model = shard(model, optimizer, accelerator.device, accelerator.num_processes)
            autocast_forward(self.model, accelerator)
        else:
            self.model = accelerator.prepare(model)
        self.scaler = accelerator.scaler  # a GradScaler with fp16, else None
        self.all_parameters = list(self.model.parameters())  # those with a gradient are clipped (freezing may change)
        self.clip_in_step = (
            bool(train_cfg.clip_grad_norm)
            and not train_cfg.clip_grad_value
            and self.scaler is None
            and not self.sharded
            and isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
            and all(group.get("fused") for group in optimizer.param_groups)
        )
        self.total_steps = train_cfg.total_steps(self.steps_per_epoch)
        self.epochs = train_cfg.planned_epochs(self.steps_per_epoch)
        self.scheduler = build_scheduler(optimizer, schedule_cfg, self.steps_per_epoch, self.total_steps)
        self.ema = None
        if train_cfg.ema:
            self.ema = AveragedModel(
                self._bare(), multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay), use_buffers=True
            )
        self.averaging = weight_averaging(train_cfg, self._bare(), self.epochs)
        self.weights, self.averaged_metrics = "", {}
        self.row_modules = []  # row_gradients' embeddings while fit runs on one CPU process
        self.state = FitState()
        self.stop_requested = False
        self.last_path = self.run_dir / "checkpoints" / "last.safetensors"
        recipe = self.run_dir / "recipe.yaml"  # kept in each full checkpoint; a resume compares (_restore)
        self.recipe_text = recipe.read_text() if recipe.is_file() else None
        self.best_path = self.run_dir / "checkpoints" / "best.safetensors"

    # -- public ------------------------------------------------------------------------------------

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self._bare()

    def fit(self, resume: bool = False) -> FitResult:
        if resume:
            self._restore()
        # Ctrl-C, and SIGTERM (kill, a cluster's preemption, docker stop): finish the step, save, say so
        stops = (signal.SIGINT, signal.SIGTERM) if _main_thread() else ()
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in stops}
        # CPU dropout masks drawn 16 bits at a time, and a large embedding's gradient written, measured and
        # cleared at the rows a step looked up, while training; the model is given back as built
        on_cpu = self.acc.device.type == "cpu"
        cheap_masks = fast_dropout(self._bare()) if on_cpu else nullcontext()
        one_process = on_cpu and self.acc.num_processes == 1 and not self.sharded
        sparse_rows = row_gradients(self._bare()) if one_process else nullcontext([])
        try:
            with cheap_masks, sparse_rows as self.row_modules:
                while self.state.epoch < self.epochs and self.state.status == "running":
                    self._train_epoch()
                    if self.state.status == "running":
                        self._end_epoch()
        finally:
            self.row_modules = []
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.state.status == "running":
            self.state.status = "finished"
        if self.state.status in ("finished", "early_stopped", "pruned"):
            if not self._save_average() and self.state.best_epoch is None:
                # nothing monitored (no validation split): best = final
                self.state.best_epoch = self.state.epoch
                self._save(self.best_path, full=False, weights=f"the final weights (epoch {self.state.epoch})")
            self._save(self.last_path, full=True)
        return FitResult(
            self.state.status,
            self.last_path,
            self.best_path,
            self.tracker.history(),
            self.weights,
            self.averaged_metrics,
        )

    # -- one epoch ---------------------------------------------------------------------------------

    def _train_epoch(self) -> None:
        s, cfg = self.state, self.cfg
        epoch, accum = s.epoch, cfg.grad_accum_steps
        n_batches = len(self.train_loader)
        for cb in self.callbacks:
            cb.on_epoch_start(epoch, self._bare())
        if self.averaging is not None:
            self.averaging.epoch_started(self.optimizer, epoch)
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_mode(epoch, self._bare())
        # a resumed epoch's partial sums are totals over all processes: rank 0 carries them on, the rest start at 0
        carried = self.acc.is_main_process
        # float64 (where the device has it): a sum of float32 losses that is exact, so the same whatever order it
        # is taken in, and a resumed epoch's total equals an uninterrupted one's to the last bit
        loss_sum = torch.tensor(s.epoch_loss_sum if carried else 0.0, device=self.acc.device, dtype=self._sum_dtype())
        examples, started = s.epoch_examples if carried else 0, time.perf_counter() - s.epoch_seconds
        bar = self._progress(epoch, n_batches, s.step_in_epoch)
        for i, batch in enumerate(self.train_loader.batches(epoch, s.step_in_epoch), start=s.step_in_epoch):
            sync = (i + 1) % accum == 0 or i + 1 == n_batches
            if self.sharded and accum > 1:
                self.model.set_requires_gradient_sync(sync)  # FSDP's no_sync: reduce once per optimiser step
            with self.acc.no_sync(self.model) if not sync and not self.sharded else nullcontext():
                loss, n = self.task.training_loss(self.model, batch)
                scaled = loss / accum if accum > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach().to(loss_sum.dtype) * n
            examples += n
            if sync:
                self._optimizer_step()
            done = sync and s.global_step >= self.total_steps  # train.max_steps reached (maybe part-way)
            if bar is not None:
                bar[0].update(bar[1], advance=1)
            if (i + 1) % cfg.log_every == 0 or i + 1 == n_batches or done:
                self._check_finite(loss_sum, epoch, i)
                self.tracker.log_step(
                    s.global_step, {"train_loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"]}
                )
            for cb in self.callbacks:
                cb.after_step(self)
            if done:
                break
            if sync and i + 1 < n_batches and self._stopping():
                s.step_in_epoch = i + 1
                s.epoch_loss_sum, s.epoch_examples = self._over_processes(loss_sum, examples)
                s.epoch_seconds = time.perf_counter() - started
                self._interrupt(bar)
                return
        if bar is not None:
            bar[0].stop()
        s.epoch_loss_sum, s.epoch_examples = self._over_processes(loss_sum, examples)
        s.epoch_seconds = time.perf_counter() - started

    def _sum_dtype(self) -> torch.dtype:
        return torch.float32 if self.acc.device.type == "mps" else torch.float64  # MPS has no float64

    def _over_processes(self, loss_sum: torch.Tensor, examples: int) -> tuple[float, int]:
        """The epoch's loss sum and example count so far, summed over all processes."""
        if self.acc.num_processes > 1:
            totals = self.acc.reduce(
                torch.stack([loss_sum, torch.tensor(float(examples), device=loss_sum.device, dtype=loss_sum.dtype)]),
                "sum",
            )
            loss_sum, examples = totals[0], int(totals[1].item())
        return loss_sum.item(), examples

    def _optimizer_step(self) -> None:
        if self.clip_in_step:
            self._step_clipped_by_norm()
        else:
            self._clip_then_step()
        if self.averaging is None or self.averaging.steps_schedule(self.state.epoch):
            self.scheduler.step()
        for cb in self.callbacks:
            cb.before_zero_grad(self)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self._bare())
        self.state.global_step += 1

    def _clip_then_step(self) -> None:
        if self.scaler is not None and (self.cfg.clip_grad_norm or self.cfg.clip_grad_value):
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        if self.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        if self.cfg.clip_grad_value:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.clip_grad_value)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()

    def _step_clipped_by_norm(self) -> None:
        """_clip_then_step for norm clipping without a scaler, with the clipping folded into the fused Adam
        kernel: it divides every gradient by `grad_scale` as it reads it (the hook GradScaler uses), which
        saves a pass that multiplies every gradient in memory (3% of a MiniLM step on the CPU). The same
        update up to rounding: the gradient divided by 1/c instead of multiplied by c, with
        c = min(1, max_norm / (norm + 1e-6)) exactly as clip_grad_norm_ computes it."""
        grads = [p.grad for p in self.all_parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(compact(grads, self.row_modules))
        coef = torch.clamp(self.cfg.clip_grad_norm / (norm + 1e-6), max=1.0)
        self.optimizer.grad_scale = torch.reciprocal(coef)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.grad_scale

    def _end_epoch(self) -> None:
        s = self.state
        lr = self.optimizer.param_groups[0]["lr"]
        if self.averaging is not None:
            self.averaging.epoch_ended(self._bare(), s.epoch, self.run_dir)
        row: dict[str, Any] = {
            "epoch": s.epoch + 1,
            "step": s.global_step,
            "train_loss": s.epoch_loss_sum / max(1, s.epoch_examples),
        }
        if self.val_loader is not None:
            with torch.no_grad():
                metrics = self.task.evaluate(self.eval_model(), self.val_loader)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        row.update(
            {"lr": lr, "samples_per_s": s.epoch_examples / max(s.epoch_seconds, 1e-9), "epoch_seconds": s.epoch_seconds}
        )
        s.epoch += 1
        s.step_in_epoch, s.epoch_loss_sum, s.epoch_examples, s.epoch_seconds = 0, 0.0, 0, 0.0
        self.tracker.log_epoch(row)
        self._print_row(row)
        if self.val_loader is not None and self.cfg.monitor not in row:
            raise UserError(f"train.monitor: '{self.cfg.monitor}' is not logged; logged: {', '.join(row)}")
        if self.cfg.monitor in row and self._improved(row, self.cfg.monitor, "best_value", "auto"):
            s.best_epoch = s.epoch
            ema = "the EMA of the weights at " if self.ema is not None else ""
            self._save(
                self.best_path,
                full=False,
                weights=f"{ema}the best epoch, {s.epoch} ({self.cfg.monitor} {s.best_value:.4g})",
            )
        for cb in self.callbacks:
            cb.after_epoch(self, row)
        es = self.cfg.early_stopping
        if es is not None and s.status == "running":
            if es.metric not in row:
                raise UserError(f"train.early_stopping.metric: '{es.metric}' is not logged; logged: {', '.join(row)}")
            if self._improved(row, es.metric, "stop_value", es.mode, es.min_delta):
                s.bad_epochs = 0
            else:
                s.bad_epochs += 1
                if s.bad_epochs >= es.patience:
                    s.status = "early_stopped"
                    console.print(f"early stopping: {es.metric} has not improved for {es.patience} epochs")
        if s.status != "running" or s.epoch == self.epochs:
            return  # fit() writes the final checkpoint with the final status
        if self._stopping():
            self._interrupt(None)
        else:
            self._save(self.last_path, full=True)

    # -- helpers -----------------------------------------------------------------------------------

    def _save_average(self) -> bool:
        """Write the averaged weights (train.swa, train.average_last) as the run's best checkpoint, scored on
        validation; False when the run does not average or stopped before its averaging began."""
        if self.averaging is None:
            return False
        if self.acc.num_processes > 1:
            self.acc.wait_for_everyone()  # the last epoch's snapshot is on disk for every process
        found = self.averaging.averaged(self._bare(), self.run_dir)
        if found is None:
            console.print("[yellow]training stopped before averaging began; the run keeps its best epoch[/yellow]")
            return False
        model, self.weights = found
        if has_batchnorm(model):
            recompute_batchnorm(model, self.task, self.train_loader.batches(self.state.epoch))
            self.weights += "; BatchNorm statistics recomputed on the training data"
        if self.val_loader is not None:
            with torch.no_grad():
                metrics = self.task.evaluate(model, self.val_loader)
            self.averaged_metrics = {f"val_{k}": v for k, v in metrics.items()}
        if self.acc.is_main_process:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in self.averaged_metrics.items())
            console.print(f"averaged weights, {self.weights}" + (f": {shown}" if shown else ""), soft_wrap=True)
        self._save(self.best_path, full=False, weights=self.weights, model=model)
        return True

    def _improved(self, row: dict, metric: str, attr: str, mode: str, min_delta: float = 0.0) -> bool:
        value, best = row[metric], getattr(self.state, attr)
        better = best is None or (
            value > best + min_delta if monitor_mode(metric, mode) == "max" else value < best - min_delta
        )
        if better:
            setattr(self.state, attr, value)
        return better

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, batch: int) -> None:
        if not torch.isfinite(loss_sum):
            self.state.status = "diverged"
            where = f"epoch {epoch + 1}, batch {batch + 1}"
            kept = (
                f"last good checkpoint kept: {self.last_path}"
                if self.last_path.exists()
                else "no checkpoint was saved yet"
            )
            raise Diverged(
                f"the training loss became NaN/inf at {where}; stopping ({kept}). "
                "Try a lower optim.lr, train.clip_grad_norm: 1.0, or train.precision: fp32."
            )

    def _interrupt(self, bar) -> None:
        if bar is not None:
            bar[0].stop()
        self.state.status = "interrupted"
        self._save(self.last_path, full=True)
        console.print(
            f"interrupted: checkpoint saved to {self.last_path}; continue with `nnrecipe resume {self.run_dir}`"
        )

    def _stopping(self) -> bool:
        """Whether to stop after this step: a stop any process was sent stops them all at the same step. Each
        receives its signal at its own moment, so a process that stopped alone a step early could leave the
        others waiting for it in the next gradient all-reduce, for ever. Costs a one-number all-reduce per
        optimiser step when there are several processes."""
        if self.acc.num_processes == 1:
            return self.stop_requested
        flag = torch.tensor(float(self.stop_requested), device=self.acc.device)
        return bool(self.acc.reduce(flag, "sum").item() > 0)

    def _on_stop_signal(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C (or SIGTERM) means now
            raise KeyboardInterrupt
        self.stop_requested = True
        what, again = (  # SIGTERM: the run said "running" for ever, and lost the epoch so far
            ("SIGTERM", "a second one aborts") if signum == signal.SIGTERM else ("Ctrl-C", "press again to abort")
        )
        console.print(f"\n{what}: finishing this step and saving a checkpoint ({again} without saving)")

    def _bare(self) -> nn.Module:
        return self.acc.unwrap_model(self.model)

    def _save(self, path: Path, full: bool, weights: str = "", model: nn.Module | None = None) -> None:
        """`full`: everything resume needs; else the weights a run is used with (`model`, default the live
        one), with `weights` saying what they are."""
        if self.sharded:  # gathering the shards is a collective: every process joins, rank 0 writes
            model_state = full_model_state(self.model)
            optimizer = full_optimizer_state(self.model, self.optimizer) if full else None
        if not self.acc.is_main_process:
            return
        if not self.sharded:
            model_state = (model or self._bare()).state_dict()
            optimizer = self.optimizer.state_dict() if full else None
        tensors = with_prefix(model_state, "model")
        if self.ema is not None and model is None:
            tensors.update(with_prefix(self.ema.state_dict(), "ema"))
        state: dict[str, Any] = {"fit": asdict(self.state)}
        if weights:
            self.weights = state["weights"] = weights
        if full:
            state |= {
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "recipe": self.recipe_text,
            }
            if self.averaging is not None:
                tensors.update(self.averaging.tensors())
                state |= self.averaging.state()
        save_checkpoint(path, tensors, state)

    def _restore(self) -> None:
        if self.acc.num_processes > 1:
            # rank 0 may still be writing the checkpoint it stopped with (a resume in the same process group):
            # a process that read the file before would start from an older step and wait forever in a
            # collective the others never join
            self.acc.wait_for_everyone()
        tensors, state = load_checkpoint(self.last_path, device="cpu")
        if not isinstance(state, dict) or "optimizer" not in state:
            raise UserError(f"{self.last_path} is not a resumable checkpoint")
        refuse_changes(state.get("recipe"), self.recipe_text, self.run_dir / "recipe.yaml")
        if self.sharded:
            load_full_state(self.model, self.optimizer, split_prefix(tensors, "model"), state["optimizer"])
        else:
            self._bare().load_state_dict(split_prefix(tensors, "model"))
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(split_prefix(tensors, "ema"))
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = FitState(**state["fit"])
        if self.averaging is not None:
            self.averaging.restore(self.optimizer, tensors, state, self.state.epoch)
        if self.state.status in ("interrupted", "running"):
            self.state.status = "running"
        set_rng_state(state["rng"])
        self.tracker.keep_epochs_before(self.state.epoch)

    def _progress(self, epoch: int, total: int, done: int):
        if not self.progress or not self.acc.is_main_process or not console.is_terminal:
            return None
        bar = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        task = bar.add_task("train", total=total, completed=done)
        bar.start()
        return bar, task

    def _print_row(self, row: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        parts = [f"epoch {row['epoch']}/{self.epochs}"]
        for k, v in row.items():
            if k in ("epoch", "step", "epoch_seconds", "samples_per_s"):
                continue
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        parts.append(f"{row['samples_per_s']:,.0f} samples/s  {row['epoch_seconds']:.1f}s")
        console.print("  ".join(parts), soft_wrap=True)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
