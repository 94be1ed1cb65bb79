"""The DF-MSCD run loop: synthesize with a mixture of generators, distill co-evolving students.

One epoch = one meta-synthesis step per generator (into the shared pool), then ``kd_steps``
student updates on pool batches (skipped during warm-up). The loop is written so that an
epoch-budget run is a pure function of (teacher, config, students, seed): every random draw
comes from the seeded global torch generator or the pool's / label queue's own generators, and
all of that state is checkpointed at epoch boundaries, so a resumed run ends bitwise where an
uninterrupted CPU run would. A budget in seconds drives the cosine schedule and the end of the
run by elapsed time, so it is not bit-reproducible across resume (or at all).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from dfmscd.config import Budget, DistillConfig, resolve_budget
from dfmscd.engine import checkpoint as ckpt
from dfmscd.engine.runtime import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from dfmscd.engine.report import balance, held_out_agreement, pool_report
from dfmscd.engine.samples import pick_samples
from dfmscd.engine.students import StudentGroup, build_student, cosine_factor
from dfmscd.engine.types import DistillResult, Event, StudentSpec, check_student_names
from dfmscd.engine.validation import check_teacher, student_card
from dfmscd.errors import CheckpointError, UnknownArchitectureError
from dfmscd.io.card import ModelCard
from dfmscd.models import count_parameters, is_model
from dfmscd.synthesis import (
    DiffAugment,
    Generator,
    ImagePool,
    MixtureOfGenerators,
    SynthesisWeights,
    TeacherBNHooks,
    make_label_source,
    resolve_num_generators,
    synthesize,
)

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5


class Distiller:
    """Distill ``teacher`` into ``students`` without data; see docs/architecture.md."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_card: ModelCard,
        students: Sequence[StudentSpec],
        config: DistillConfig,
        budget: Budget | None = None,
        callbacks: Sequence[Callable[[Event], None]] = (),
        should_cancel: Callable[[], bool] | None = None,
        checkpoint_path: str | Path | None = None,
    ) -> None:
        self.specs = list(students)
        self.names = check_student_names(self.specs)
        self.config, self.card = config, teacher_card
        self.budget = resolve_budget(config, budget)
        self.device = resolve_device(config.device)
        self.callbacks = list(callbacks)
        self._should_cancel = should_cancel or (lambda: False)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        for spec in self.specs:
            if not is_model(spec.architecture):
                raise UnknownArchitectureError(
                    f"unknown student architecture {spec.architecture!r}; run 'dfmscd architectures' for the list"
                )
        self.student_cards = {name: student_card(spec, teacher_card) for name, spec in zip(self.names, self.specs)}
        check_teacher(teacher, teacher_card)
        self._teacher_src = teacher

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, card, dev = self.config, self.card, self.device
        c, h, _ = card.input_shape
        seed_everything(cfg.seed)
        self.teacher = copy.deepcopy(self._teacher_src).to(dev).eval().requires_grad_(False)
        self.hooks = TeacherBNHooks(self.teacher, cfg.bn_momentum)
        self.students = StudentGroup([build_student(s, card.num_classes, card.input_shape).to(dev) for s in self.specs], cfg)
        k = resolve_num_generators(cfg.num_generators, len(self.specs))
        conditional_on = card.num_classes if cfg.conditional_generator else 0

        def make_gen() -> Generator:
            return Generator(cfg.latent_dim, cfg.generator_width, c, h, card.mean, card.std, conditional_on)

        self.mixture = MixtureOfGenerators(k, len(self.specs), make_gen, cfg.lr_g * cfg.inner_steps, dev)
        self.pool = ImagePool(cfg.pool_capacity, card.input_shape, card.num_classes, cfg.pool_eviction, seed=cfg.seed + 1)
        self.labels = make_label_source(card.num_classes, cfg.label_bridging, cfg.bridge_correction, seed=cfg.seed + 2)
        flip = (c == 3) if cfg.augment_flip is None else cfg.augment_flip
        self.augment = DiffAugment(h, flip=flip) if cfg.augment else None
        self.weights = SynthesisWeights(cfg.bn, cfg.oh, cfg.adv, cfg.student_adv, cfg.diversity)
        self.norm_mean = torch.tensor(card.mean, device=dev).view(1, -1, 1, 1)
        self.norm_std = torch.tensor(card.std, device=dev).view(1, -1, 1, 1)
        if self.budget.epochs is not None:
            scaled = self.budget.epochs * cfg.warmup_epochs // cfg.epochs
            self.warmup = min(cfg.warmup_epochs, scaled, self.budget.epochs - 1)
        else:
            self.warmup = cfg.warmup_epochs
        # counters (all checkpointed)
        self.epoch, self.kd_steps_done, self.images_synthesized = 0, 0, 0
        self.elapsed_before, self.synth_s, self.kd_s = 0.0, 0.0, 0.0
        self.completed = False
        self.last_losses: list[float | None] = [None] * len(self.specs)
        self.resumed_from: int | None = None
        self._cancelled = False
        self._last_progress = 0.0
        self.fingerprint = ckpt.run_fingerprint(
            cfg.model_dump(mode="json"),
            self.budget.model_dump(exclude_none=True),
            [{"architecture": s.architecture, "name": n, "arch_kwargs": s.arch_kwargs} for s, n in zip(self.specs, self.names)],
            card.model_dump(mode="json"),
            ckpt.module_digest(self.teacher),
        )

    # ------------------------------------------------------------------ helpers
    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(kind=kind, epoch=self.epoch, progress=self._progress(), data=data)
        for cb in self.callbacks:
            cb(event)

    def _log(self, message: str) -> None:
        log.info(message)
        self._emit("log", {"message": message})

    def _cancel(self) -> bool:
        if not self._cancelled and self._should_cancel():
            self._cancelled = True
        return self._cancelled

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._session_start)

    def _in_warmup(self) -> bool:
        if self.epoch >= self.warmup:
            return False
        if self.budget.seconds is not None:  # warm-up takes at most the config's share of the time
            return self.elapsed < self.budget.seconds * self.config.warmup_epochs / self.config.epochs
        return True

    def _finished(self) -> bool:
        if self.completed:
            return True
        if self.budget.epochs is not None:
            return self.epoch >= self.budget.epochs
        return self.elapsed >= self.budget.seconds

    def _progress(self, within_epoch: float = 0.0) -> float:
        if getattr(self, "completed", False):
            return 1.0
        if self.budget.epochs is not None:
            return min(1.0, (self.epoch + within_epoch) / self.budget.epochs)
        start = getattr(self, "_session_start", None)
        return 0.0 if start is None else min(1.0, self.elapsed / self.budget.seconds)

    def _schedule_fraction(self) -> float:
        if self.budget.epochs is not None:
            total = max(1, (self.budget.epochs - self.warmup) * self.config.kd_steps)
            return self.kd_steps_done / total
        return self.elapsed / self.budget.seconds

    def _maybe_progress(self, within_epoch: float, phase: str) -> None:
        now = time.perf_counter()
        if now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        p = self._progress(within_epoch)
        if self.budget.seconds is not None:
            eta = max(0.0, self.budget.seconds - self.elapsed)
        else:
            eta = self.elapsed * (1 - p) / p if p > 0 else None
        event = Event("progress", self.epoch, p, {"fraction": p, "epoch": self.epoch, "phase": phase, "eta_s": eta, "elapsed_s": self.elapsed})
        for cb in self.callbacks:
            cb(event)

    def _to_input(self, images_u8: torch.Tensor, augment: bool) -> torch.Tensor:
        x01 = images_u8.to(self.device).float() / 255.0
        if augment and self.augment is not None:
            x01 = self.augment(x01)
        return (x01 - self.norm_mean) / self.norm_std

    # ------------------------------------------------------------------ one epoch
    def _out_of_time(self) -> bool:
        return self.budget.seconds is not None and self.elapsed >= self.budget.seconds

    def _synthesis_phase(self, adversarial: bool, units: int) -> str:
        cfg = self.config
        t0 = time.perf_counter()
        try:
            with self.students.frozen() as students:
                for k, slow in enumerate(self.mixture.generators):
                    if self._cancel():
                        return "cancelled"
                    if self._out_of_time():
                        return "out_of_time"
                    recognised = self.pool.histogram("teacher_argmax") if len(self.pool) else None
                    labels = self.labels.next(cfg.synth_batch_size, recognised)
                    out = synthesize(
                        slow, self.mixture.fast, self.mixture.meta_optimizers[k],
                        labels=labels, teacher=self.teacher, hooks=self.hooks, students=students,
                        partner=self.mixture.partners[k], weights=self.weights, augment=self.augment,
                        lr_g=cfg.lr_g, lr_z=cfg.lr_z, inner_steps=cfg.inner_steps,
                        meta_algorithm=cfg.meta_algorithm, other_summaries=self.mixture.other_summaries(k),
                        adversarial=adversarial, should_cancel=self._cancel,
                    )  # fmt: skip
                    if out is None:
                        return "cancelled"
                    self.pool.add(out.images, out.labels, out.teacher_argmax)
                    self.mixture.summaries[k] = out.summary
                    self.images_synthesized += out.images.shape[0]
                    self.synth_terms = out.loss_terms
                    self._maybe_progress((k + 1) / units, "synthesis")
        finally:
            self.synth_s += time.perf_counter() - t0
        return "done"

    def _kd_phase(self, units: int) -> str:
        cfg = self.config
        t0 = time.perf_counter()
        sums: torch.Tensor | None = None
        n = 0
        try:
            for step in range(cfg.kd_steps):
                if self._cancel():
                    return "cancelled"
                if self._out_of_time():
                    return "out_of_time"
                self.students.set_lr_factor(cosine_factor(self._schedule_fraction()))
                idx = self.pool.sample_indices(cfg.kd_batch_size)
                x = self._to_input(self.pool.images[idx], augment=True)
                with torch.no_grad():
                    t_logits = self.teacher(x)
                step_losses = self.students.kd_step(x, t_logits)
                self.kd_steps_done += 1
                sums = step_losses if sums is None else sums + step_losses
                n += 1
                self._maybe_progress((len(self.mixture) + step + 1) / units, "distillation")
        finally:
            self.kd_s += time.perf_counter() - t0
            if sums is not None:
                self.last_losses = [float(v) / n for v in sums.cpu()]
        return "done"

    def _run_epoch(self) -> str:
        cfg, e = self.config, self.epoch
        if cfg.reset_first_layer_epoch is not None and e == cfg.reset_first_layer_epoch:
            for k in range(len(self.mixture)):
                self.mixture.reset(k, first_layer_only=True)
            self._log(f"epoch {e}: re-initialised the generators' first layer")
        if cfg.generator_reset_every is not None and e > 0 and e % cfg.generator_reset_every == 0:
            for k in range(len(self.mixture)):
                self.mixture.reset(k)
            self._log(f"epoch {e}: re-initialised the generators")
        warm = self._in_warmup()
        units = len(self.mixture) + (0 if warm else cfg.kd_steps)
        outcome = self._synthesis_phase(adversarial=not warm, units=units)
        if outcome != "done" or warm:
            return outcome
        return self._kd_phase(units)

    def _epoch_metrics(self, images_before: int, synth_before: float) -> dict[str, Any]:
        hist_t = self.pool.histogram("teacher_argmax")
        synth_dt = self.synth_s - synth_before
        return {
            "epoch": self.epoch,
            "student_loss": dict(zip(self.names, self.last_losses)),
            "pool_size": len(self.pool),
            "label_histogram": self.pool.histogram("labels"),
            "teacher_argmax_histogram": hist_t,
            "pool_balance": balance(hist_t),
            "images_per_s": (self.images_synthesized - images_before) / synth_dt if synth_dt > 0 else None,
            "synthesis_loss": dict(getattr(self, "synth_terms", {})),
            "lr": self.students.optimizers[0].param_groups[0]["lr"],
            "elapsed_s": self.elapsed,
        }

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "kd_steps_done": self.kd_steps_done,
            "images_synthesized": self.images_synthesized,
            "elapsed": self.elapsed,
            "synth_s": self.synth_s,
            "kd_s": self.kd_s,
            "completed": self.completed,
            "last_losses": [float("nan") if v is None else v for v in self.last_losses],
            "students": self.students.state_dict(),
            "mixture": self.mixture.state_dict(),
            "pool": self.pool.state_dict(),
            "labels": self.labels.state_dict(),
            "bn_ema": self.hooks.state_dict(),
            "rng": capture_rng_state(self.device),
        }

    def _save(self) -> None:
        if self.checkpoint_path is None:
            return
        ckpt.save_checkpoint(self._state(), self.checkpoint_path)
        self._emit("checkpoint", {"epoch": self.epoch})  # no path: events reach tenants

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.epoch, self.kd_steps_done = int(state["epoch"]), int(state["kd_steps_done"])
            self.images_synthesized = int(state["images_synthesized"])
            self.elapsed_before = float(state["elapsed"])
            self.synth_s, self.kd_s = float(state["synth_s"]), float(state["kd_s"])
            self.completed = bool(state["completed"])
            self.last_losses = [None if v != v else float(v) for v in state["last_losses"]]
            self.students.load_state_dict(state["students"])
            self.mixture.load_state_dict(state["mixture"])
            self.pool.load_state_dict(state["pool"])
            self.labels.load_state_dict(state["labels"])
            self.hooks.load_state_dict(state["bn_ema"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"run checkpoint {self.checkpoint_path} is inconsistent: {str(exc).splitlines()[0][:200]}") from None
        restore_rng_state(state["rng"], self.device)
        self.resumed_from = self.epoch

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = True) -> DistillResult:
        """Run to the budget (or cancellation); see the module docstring for reproducibility."""
        self._setup()
        self._session_start = time.perf_counter()
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._restore(ckpt.load_checkpoint(self.checkpoint_path, self.fingerprint))
            self._session_start = time.perf_counter()
            # No path here: events reach the service's tenants, and file paths are the server's business.
            self._log(f"resumed from checkpoint at epoch {self.epoch}")
        else:
            self._log(
                f"distilling into {len(self.specs)} students with {len(self.mixture)} generators on {self.device}"
            )
        status = "completed"
        try:
            while not self._finished():
                images_before, synth_before = self.images_synthesized, self.synth_s
                outcome = self._run_epoch()
                if outcome == "cancelled":
                    status = "cancelled"
                    break
                self.epoch += 1
                self._emit("metrics", self._epoch_metrics(images_before, synth_before))
                if outcome == "out_of_time" or self._finished():
                    break
                if self.epoch % self.config.checkpoint_every == 0:
                    self._save()
            if status == "completed":
                self.completed = True
                self._save()
                self._log("distillation completed")
            else:
                self._log("distillation cancelled")
            return self._result(status)
        finally:
            self.hooks.remove()

    # ------------------------------------------------------------------ result
    def _result(self, status: str) -> DistillResult:
        t0 = time.perf_counter()
        agreement: list[float | None] = [None] * len(self.specs)
        held_out = 0
        if status == "completed" and len(self.pool):
            agreement, held_out = held_out_agreement(  # type: ignore[assignment]
                mixture=self.mixture, students=self.students, teacher=self.teacher, hooks=self.hooks,
                weights=self.weights, augment=self.augment, config=self.config,
                num_classes=self.card.num_classes, to_input=lambda u8: self._to_input(u8, augment=False),
                adversarial=self.epoch > self.warmup,
            )  # fmt: skip
        eval_s = time.perf_counter() - t0
        samples, sample_labels = pick_samples(self.pool)
        students = {n: m.cpu().eval() for n, m in zip(self.names, self.students.modules)}
        total_s = self.elapsed
        report = {
            "status": status,
            "config": self.config.model_dump(mode="json"),
            "budget": self.budget.model_dump(exclude_none=True),
            "device": str(self.device),
            "epochs_completed": self.epoch,
            "warmup_epochs": self.warmup,
            "kd_steps": self.kd_steps_done,
            "resumed_from_epoch": self.resumed_from,
            "num_generators": len(self.mixture),
            "generator_partners": [self.names[p] for p in self.mixture.partners],
            "students": {
                name: {
                    "architecture": spec.architecture,
                    "params": count_parameters(students[name]),
                    "final_loss": loss,
                    "teacher_agreement": agr,
                }
                for name, spec, loss, agr in zip(self.names, self.specs, self.last_losses, agreement)
            },
            "held_out_images": held_out,
            "timings": {"total_s": total_s, "synthesis_s": self.synth_s, "kd_s": self.kd_s, "evaluation_s": eval_s},
            "images_synthesized": self.images_synthesized,
            "images_per_s": self.images_synthesized / total_s if total_s > 0 else None,
            "synthesis_images_per_s": self.images_synthesized / self.synth_s if self.synth_s > 0 else None,
            "pool": pool_report(self.pool),
            "class_names": list(self.card.class_names) if self.card.class_names else None,
        }
        return DistillResult(status, students, dict(self.student_cards), report, samples, sample_labels)
