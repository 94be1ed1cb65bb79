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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from dfmscd import sizing
from dfmscd.config import Budget, DistillConfig, resolve_budget
from dfmscd.costs import kd_rates, measure_kd_step_ms
from dfmscd.engine import checkpoint as ckpt
from dfmscd.engine import planning
from dfmscd.engine.runtime import (
    capture_rng_state,
    network_memory_format,
    resolve_device,
    restore_rng_state,
    seed_everything,
)
from dfmscd.engine.report import balance, held_out_agreement, pool_diversity, pool_report
from dfmscd.engine.samples import pick_calibration, pick_samples
from dfmscd.engine.students import StudentGroup, build_student, cosine_factor
from dfmscd.engine.types import DistillResult, Event, Outcome, Phase, StudentSpec, check_student_names
from dfmscd.engine.validation import check_teacher, student_card
from dfmscd.errors import CheckpointError, UnknownArchitectureError
from dfmscd.io.card import ModelCard
from dfmscd.models import count_parameters, is_model
from dfmscd.synthesis import admission
from dfmscd.synthesis import (
    DiffAugment,
    Generator,
    ImagePool,
    MixtureOfGenerators,
    SynthesisWeights,
    TeacherBNHooks,
    make_label_source,
    conditional_generators,
    resolve_num_generators,
    synthesize,
)

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5
POOL_ON_DEVICE_MAX_BYTES = 2 * 2**30
EMA = 0.5  # smoothing of the per-step duration estimates that keep a seconds budget


@dataclass
class RunState:
    """The run's counters: what a checkpoint stores besides the components' own states.

    Checkpointing (``Distiller._state``) and restoring (``Distiller._restore``) both go through
    ``to_checkpoint`` / ``from_checkpoint`` and ``Distiller._components``, so a new field is
    listed once. ``elapsed`` is the wall time of earlier sessions (the live figure is
    ``Distiller.elapsed``).
    """

    epoch: int = 0
    kd_steps_done: int = 0
    images_synthesized: int = 0
    elapsed: float = 0.0
    synth_s: float = 0.0
    kd_s: float = 0.0
    checkpoint_s: float = 0.0
    setup_s: float = 0.0  # the first session's set-up, which warm-up and the schedule leave out
    completed: bool = False
    last_losses: list[float | None] = field(default_factory=list)
    kd_rates: list[int] = field(default_factory=list)  # updates per shared KD step, per student (fixed at the start)
    sizing: dict[str, Any] = field(default_factory=dict)  # what the first start measured and derived

    _INT = ("epoch", "kd_steps_done", "images_synthesized")
    _FLOAT = ("elapsed", "synth_s", "kd_s")

    def to_checkpoint(self, elapsed: float) -> dict[str, Any]:
        out = asdict(self)
        out["elapsed"] = elapsed
        out["last_losses"] = [float("nan") if v is None else float(v) for v in self.last_losses]
        return out

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "RunState":
        return cls(
            **{k: int(state[k]) for k in cls._INT},
            **{k: float(state[k]) for k in cls._FLOAT},
            checkpoint_s=float(state.get("checkpoint_s", 0.0)),
            setup_s=float(state.get("setup_s", 0.0)),
            completed=bool(state["completed"]),
            last_losses=[None if v != v else float(v) for v in state["last_losses"]],
            kd_rates=[int(v) for v in state.get("kd_rates", [])],
            sizing=dict(state.get("sizing") or {}),
        )


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
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (seconds, monotonic; default ``time.perf_counter``, i.e. wall time) is what a
        seconds budget and the report's timings are measured with; a benchmark on a shared
        machine can pass ``time.process_time`` to budget CPU time instead."""
        self._clock = clock or time.perf_counter
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
        card, dev = self.card, self.device
        c, h, _ = card.input_shape
        cuda = dev.type == "cuda"
        self.intent = self.config  # what the caller asked for; derived fields are replaced below
        self.config, self.shape_values = planning.shape_sized(self.intent, card.input_shape, card.num_classes, cuda, self.names)
        cfg = self.config
        seed_everything(cfg.seed)
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = torch.bfloat16 if (cfg.autocast == "bf16" or (cfg.autocast == "auto" and cuda)) else None
        # The teacher's layout is also the layout images are handed over in; each student keeps its own
        # (network_memory_format), and a convolution follows its weights' layout.
        self.teacher = copy.deepcopy(self._teacher_src).to(dev).eval().requires_grad_(False)
        self.memory_format = network_memory_format(self.teacher, cfg.channels_last, dev, h)
        self.teacher = self.teacher.to(memory_format=self.memory_format)
        self.hooks = TeacherBNHooks(self.teacher, cfg.bn_momentum)
        modules = [build_student(s, card.num_classes, card.input_shape).to(dev) for s in self.specs]
        self.student_formats = [network_memory_format(m, cfg.channels_last, dev, h) for m in modules]
        modules = [m.to(memory_format=f) for m, f in zip(modules, self.student_formats)]
        self.students = StudentGroup(modules, cfg, amp_dtype=self.amp_dtype)
        k = resolve_num_generators(cfg.num_generators, len(self.specs))
        conditional = conditional_generators(cfg, k)

        def make_gen(i: int) -> Generator:
            classes = card.num_classes if conditional[i] else 0
            return Generator(cfg.latent_dim, cfg.generator_width, c, h, card.mean, card.std, classes)

        self.mixture = MixtureOfGenerators(k, len(self.specs), make_gen, cfg.lr_g * cfg.inner_steps, dev)
        pool_bytes = cfg.pool_capacity * c * h * h
        on_device = (cuda and pool_bytes <= POOL_ON_DEVICE_MAX_BYTES) if cfg.pool_on_device is None else cfg.pool_on_device
        self.pool = ImagePool(cfg.pool_capacity, card.input_shape, card.num_classes, cfg.pool_eviction,
                              seed=cfg.seed + 1, device=dev if on_device else "cpu")  # fmt: skip
        self.labels = make_label_source(card.num_classes, cfg.label_bridging, cfg.bridge_correction, seed=cfg.seed + 2)
        flip = (c == 3) if cfg.augment_flip is None else cfg.augment_flip
        self.augment = DiffAugment(h, flip=flip) if cfg.augment else None
        self.weights = SynthesisWeights(cfg.bn, cfg.oh, cfg.adv, cfg.student_adv, cfg.diversity)
        self.norm_mean = torch.tensor(card.mean, device=dev).view(1, -1, 1, 1)
        self.norm_std = torch.tensor(card.std, device=dev).view(1, -1, 1, 1)
        self._set_warmup()
        self.sizing: dict[str, Any] = {"derived": dict(self.shape_values)}
        self._start_kd_ms: list[float] = []  # each student's KD step, when the start measured it
        self.st = RunState(last_losses=[None] * len(self.specs))  # everything here is checkpointed
        self.resumed_from: int | None = None
        self._cancelled = False
        self._last_progress = 0.0
        # per-step duration estimates (seconds), for ending a seconds budget on time
        self._synth_step_s: float | None = None
        self._kd_step_s: float | None = None
        self._save_s = 0.0
        self._epoch_stats: dict[str, float] = {}
        self.fingerprint = ckpt.run_fingerprint(
            planning.fingerprint_config(self.intent),
            self.budget.model_dump(exclude_none=True),
            [{"architecture": s.architecture, "name": n, "arch_kwargs": s.arch_kwargs} for s, n in zip(self.specs, self.names)],
            card.model_dump(mode="json"),
            ckpt.module_digest(self.teacher),
        )

    def _set_warmup(self) -> None:
        cfg = self.config
        if self.budget.epochs is not None:
            scaled = self.budget.epochs * cfg.warmup_epochs // cfg.epochs
            self.warmup = min(cfg.warmup_epochs, scaled, self.budget.epochs - 1)
        else:
            self.warmup = cfg.warmup_epochs

    def _components(self) -> dict[str, Any]:
        """The stateful parts of a run, by checkpoint key (each has state_dict/load_state_dict)."""
        return {"students": self.students, "mixture": self.mixture, "pool": self.pool,
                "labels": self.labels, "bn_ema": self.hooks}  # fmt: skip

    # ------------------------------------------------------------------ helpers
    @property
    def epoch(self) -> int:
        return self.st.epoch

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(kind=kind, epoch=self.st.epoch, progress=self._progress(), data=data)
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
        return self.st.elapsed + (self._clock() - self._session_start)

    def _in_warmup(self) -> bool:
        if self.st.epoch >= self.warmup:
            return False
        if self.budget.seconds is not None:  # warm-up takes at most the config's share of the training time
            share = self.config.warmup_epochs / self.config.epochs
            return self.elapsed - self.st.setup_s < (self._deadline() - self.st.setup_s) * share
        return True

    def _finished(self) -> bool:
        if self.st.completed:
            return True
        if self.budget.epochs is not None:
            return self.st.epoch >= self.budget.epochs
        return self.elapsed >= self._deadline()

    def _progress(self, within_epoch: float = 0.0) -> float:
        st = getattr(self, "st", None)
        if st is not None and st.completed:
            return 1.0
        epoch = st.epoch if st is not None else 0
        if self.budget.epochs is not None:
            return min(1.0, (epoch + within_epoch) / self.budget.epochs)
        start = getattr(self, "_session_start", None)
        return 0.0 if start is None or st is None else min(1.0, self.elapsed / self.budget.seconds)

    def _schedule_fraction(self) -> float:
        if self.budget.epochs is not None:
            total = max(1, (self.budget.epochs - self.warmup) * self.config.kd_steps)
            return self.st.kd_steps_done / total
        start = self.st.setup_s
        return (self.elapsed - start) / max(self._deadline() - start, 1e-9)

    def _maybe_progress(self, within_epoch: float, phase: Phase) -> None:
        now = time.perf_counter()
        if now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        p = self._progress(within_epoch)
        if self.budget.seconds is not None:
            eta = max(0.0, self.budget.seconds - self.elapsed)
        else:
            eta = self.elapsed * (1 - p) / p if p > 0 else None
        event = Event("progress", self.st.epoch, p,
                      {"fraction": p, "epoch": self.st.epoch, "phase": phase.value, "eta_s": eta, "elapsed_s": self.elapsed})  # fmt: skip
        for cb in self.callbacks:
            cb(event)

    def _to_input(self, images_u8: torch.Tensor, augment: bool) -> torch.Tensor:
        x01 = images_u8.to(self.device, non_blocking=True).float() / 255.0
        if augment and self.augment is not None:
            x01 = self.augment(x01)
        return ((x01 - self.norm_mean) / self.norm_std).contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ time keeping
    def _reserve_s(self) -> float:
        """Seconds kept back at the end of a seconds budget: the held-out evaluation (one
        synthesis round per generator), the final checkpoint, and a small margin."""
        synth = self._synth_step_s or 0.0
        return len(self.mixture) * synth + self._save_s + 0.25

    def _deadline(self) -> float:
        """When training must stop so that the run, evaluation included, ends at the budget."""
        assert self.budget.seconds is not None
        return max(0.0, self.budget.seconds - self._reserve_s())

    def _out_of_time(self, next_step_s: float | None) -> bool:
        """True when a seconds budget cannot fit one more step of the estimated duration."""
        if self.budget.seconds is None:
            return False
        return self.elapsed + (next_step_s or 0.0) >= self._deadline()

    @staticmethod
    def _smooth(old: float | None, new: float) -> float:
        return new if old is None else EMA * old + (1 - EMA) * new

    # ------------------------------------------------------------------ one epoch
    def _synthesis_phase(self, adversarial: bool, units: int) -> Outcome:
        cfg = self.config
        t0 = self._clock()
        stats = self._epoch_stats
        try:
            with self.students.frozen() as students:
                for k, slow in enumerate(self.mixture.generators):
                    if self._cancel():
                        return Outcome.CANCELLED
                    if self._out_of_time(self._synth_step_s):
                        return Outcome.OUT_OF_TIME
                    ts = self._clock()
                    recognised = self.pool.histogram("teacher_argmax") if len(self.pool) else None
                    labels = self.labels.next(cfg.synth_batch_size, recognised)
                    out = synthesize(
                        slow, self.mixture.fast_for(k), self.mixture.meta_optimizers[k],
                        labels=labels, teacher=self.teacher, hooks=self.hooks, students=students,
                        partner=self.mixture.partners[k], weights=self.weights, augment=self.augment,
                        lr_g=cfg.lr_g, lr_z=cfg.lr_z, inner_steps=cfg.inner_steps,
                        meta_algorithm=cfg.meta_algorithm, other_summaries=self.mixture.other_summaries(k),
                        adversarial=adversarial, should_cancel=self._cancel,
                        class_weights=self.labels.loss_weights(recognised),
                        amp_dtype=self.amp_dtype, memory_format=self.memory_format,
                    )  # fmt: skip
                    if out is None:
                        return Outcome.CANCELLED
                    self._admit(out)
                    self.mixture.summaries[k] = out.summary
                    self.st.images_synthesized += out.images.shape[0]
                    self.synth_terms = out.loss_terms
                    stats["confidence"] = stats.get("confidence", 0.0) + out.teacher_confidence
                    stats["recognised"] = stats.get("recognised", 0.0) + out.recognised
                    stats["batches"] = stats.get("batches", 0.0) + 1
                    self._synth_step_s = self._smooth(self._synth_step_s, self._clock() - ts)
                    self._maybe_progress((k + 1) / units, Phase.SYNTHESIS)
        finally:
            self.st.synth_s += self._clock() - t0
        return Outcome.DONE

    def _admit(self, out: Any) -> None:
        """Add a synthesis batch to the pool; with ``pool_admission="recognised"`` only the
        images whose teacher argmax is the requested label, with ``"balanced"`` only those that keep
        the pool's teacher-argmax balance at ``synthesis.admission.BALANCE``."""
        images, labels, argmax = out.images, out.labels, out.teacher_argmax
        mode = self.config.pool_admission
        if mode != "all":
            if mode == "recognised":
                keep = argmax == labels
            else:
                floor = admission.admission_floor(self.st.images_synthesized, self.card.num_classes,
                                                  self.config.synth_batch_size, admission.LEAK)
                keep = admission.balanced_admission(self.pool.histogram("teacher_argmax"), argmax, admission.BALANCE, floor)
            self._epoch_stats["dropped"] = self._epoch_stats.get("dropped", 0.0) + float((~keep).sum())
            if not bool(keep.any()):
                return
            images, labels, argmax = images[keep.to(images.device)], labels[keep], argmax[keep]
        self.pool.add(images, labels, argmax)

    def _kd_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An augmented KD batch from the pool (``kd_sampling``) and the teacher's logits on it."""
        cfg = self.config
        n = cfg.kd_batch_size
        idx = self.pool.sample_balanced(n) if cfg.kd_sampling == "balanced" else self.pool.sample_indices(n)
        x = self._to_input(self.pool.gather(idx), augment=True)
        with torch.no_grad(), self.students.autocast():
            return x, self.teacher(x).float()

    def _kd_phase(self, units: int) -> Outcome:
        cfg = self.config
        t0 = self._clock()
        sums: torch.Tensor | None = None
        n = 0
        try:
            for step in range(cfg.kd_steps):
                if self._cancel():
                    return Outcome.CANCELLED
                if self._out_of_time(self._kd_step_s):
                    return Outcome.OUT_OF_TIME
                ts = self._clock()
                self.students.set_lr_factor(cosine_factor(self._schedule_fraction()))
                step_losses = self.students.kd_step(*self._kd_batch())
                for members in self._extra_rounds:  # kd_rates: further updates for the cheaper students
                    self.students.kd_step(*self._kd_batch(), members)
                self.st.kd_steps_done += 1
                sums = step_losses if sums is None else sums + step_losses
                n += 1
                # On CUDA this measures the launch, not the kernels (no sync); the estimate then
                # catches up at the epoch's one host transfer below, which is accurate enough
                # for keeping the budget.
                self._kd_step_s = self._smooth(self._kd_step_s, self._clock() - ts)
                self._maybe_progress((len(self.mixture) + step + 1) / units, Phase.DISTILLATION)
        finally:
            if sums is not None:
                self.st.last_losses = [v / n for v in sums.cpu().tolist()]  # the phase's one host sync
            kd_dt = self._clock() - t0
            self.st.kd_s += kd_dt
            if n:
                self._kd_step_s = kd_dt / n
        return Outcome.DONE

    def _fix_kd_rates(self) -> None:
        """At a run's first start, measure each student's KD step once and keep the rates it gives;
        with a seconds budget, also measure the synthesis costs and size the budget's work
        (``dfmscd.sizing``). Both are checkpointed, so a resumed run takes the same steps as an
        uninterrupted one."""
        if not self.st.kd_rates:
            rated = self.config.kd_max_rate > 1 and len(self.specs) > 1
            timed = self.budget.seconds is not None
            kd_ms = self._kd_ms_per_student() if (rated or timed) else []
            self._start_kd_ms = kd_ms
            self.st.kd_rates = kd_rates(kd_ms, self.config.kd_max_rate) if rated else [1] * len(self.specs)
            if rated:
                self._log("KD updates per shared step: " + ", ".join(f"{n} {r}" for n, r in zip(self.names, self.st.kd_rates)))
            if timed:
                self._size_for_budget(kd_ms)
        else:
            self.sizing = self.st.sizing or self.sizing
        budget_values = self.sizing.get("budget_values") or {}
        if budget_values:
            self.config = planning.with_values(self.config, budget_values)
            self._set_warmup()
        # round k >= 1 of a shared KD step: the students whose rate exceeds k
        rates = self.st.kd_rates
        self._extra_rounds = [[i for i, r in enumerate(rates) if r > k] for k in range(1, max(rates))]

    def _teacher_forward_ms(self) -> float:
        x = torch.zeros(self.config.kd_batch_size, *self.card.input_shape, device=self.device)
        x = x.contiguous(memory_format=self.memory_format)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with torch.no_grad(), self.students.autocast():
            self.teacher(x)
            sync()
            t0 = time.perf_counter()
            self.teacher(x)
            sync()
        return (time.perf_counter() - t0) * 1000.0

    def _size_for_budget(self, kd_ms: list[float]) -> None:
        """What the seconds budget buys on this device, and (``auto_size``) the KD steps per epoch and
        warm-up that buy every student the floor of updates; announced as a ``sizing`` event."""
        cfg = self.config
        synth_ms = planning.synthesis_costs_ms(
            teacher=self.teacher, students=self.students.modules, generator=self.mixture.generators[0], config=cfg,
            input_shape=self.card.input_shape, device=self.device, memory_format=self.memory_format,
            autocast=self.students.autocast)
        teacher_ms = self._teacher_forward_ms()
        dump = cfg.model_dump()
        costs0 = sizing.costs_from(dump, kd_ms, teacher_ms, synth_ms, self.st.kd_rates, len(self.mixture), 0.0)
        overhead = self.elapsed + len(self.mixture) * costs0.warmup_synth_step_s + 0.25  # + held-out evaluation
        costs = sizing.costs_from(dump, kd_ms, teacher_ms, synth_ms, self.st.kd_rates, len(self.mixture), overhead)
        plan = sizing.plan_run(self.intent.model_dump(), self.card.input_shape, self.card.num_classes,
                               self.device.type == "cuda", self.budget.seconds, costs, self.names)
        budget_values = {k: v for k, v in plan.values.items() if k in ("kd_steps", "warmup_epochs")}
        advice = plan.advice
        assert advice is not None
        device = planning.device_label(self.device)
        message = advice.message(device)
        warnings = [message] if advice.below_floor else []
        self.sizing = {
            "device": device,
            "derived": {**self.sizing.get("derived", {}), **budget_values},
            "budget_values": budget_values,
            "measured_ms": {  # per student name; the batches they were measured at
                "kd_batch_size": cfg.kd_batch_size, "synth_batch_size": cfg.synth_batch_size,
                "kd": dict(zip(self.names, kd_ms)), "teacher_forward": teacher_ms,
                "synthesis_teacher": synth_ms["teacher"], "synthesis_generator": synth_ms["generator"],
                "synthesis": dict(zip(self.names, synth_ms["students"])),
            },
            "costs": {"kd_step_s": costs.kd_step_s, "synth_step_s": costs.synth_step_s,
                      "warmup_synth_step_s": costs.warmup_synth_step_s, "overhead_s": costs.overhead_s},
            "advice": advice.to_dict(),
            "message": message,
            "notes": plan.notes,
            "warnings": warnings,
            # the KD steps per epoch are measured again on the first full epoch (``_calibrate``)
            "calibrate": "kd_steps" in budget_values,
        }
        self.st.sizing = self.sizing
        effective = planning.with_values(self.config, budget_values)
        self._log(message)
        for note in plan.notes:
            self._log(note)
        self._emit("sizing", {"config": effective.model_dump(mode="json"), **self.sizing})

    def _run_epoch(self) -> Outcome:
        cfg, e = self.config, self.st.epoch
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
        synth0, kd0, steps0 = self.st.synth_s, self.st.kd_s, self.st.kd_steps_done
        outcome = self._synthesis_phase(adversarial=not warm, units=units)
        if outcome is not Outcome.DONE or warm:
            return outcome
        outcome = self._kd_phase(units)
        if outcome is Outcome.DONE and self.sizing.get("calibrate"):
            self._calibrate(self.st.synth_s - synth0, self.st.kd_s - kd0, self.st.kd_steps_done - steps0)
        return outcome

    def _calibrate(self, synth_s: float, kd_s: float, kd_steps: int) -> None:
        """After the first epoch with every term on, the KD steps per epoch for the rest of the run from
        what that epoch's synthesis and KD steps really took: at the configured synthesis share, or a
        smaller one if the rest of the budget would leave a student short of the floor. The start's
        estimate adds up passes measured one by one, which leaves out augmentation, the losses, the
        optimisers and the pool (with a width-16 generator on MNIST synthesis took 0.56 of the time
        where 0.3 was planned), so it only decides the warm-up."""
        if kd_steps <= 0 or synth_s <= 0:
            return
        rates = self.st.kd_rates or [1] * len(self.names)
        costs = sizing.Costs(kd_step_s=kd_s / kd_steps, synth_step_s=synth_s / len(self.mixture), warmup_synth_step_s=0.0,
                             generators=len(self.mixture), kd_rates=tuple(rates))
        done = [self.st.kd_steps_done * r for r in rates]
        advice = sizing.replan(costs, self._deadline() - self.elapsed, done, self.config.synthesis_share,
                               self.config.min_kd_updates, self.names)
        steps = advice.kd_steps_per_epoch
        planned = self.config.kd_steps
        start = self.sizing["advice"]
        advice = sizing.Advice(self.st.epoch + advice.epochs, start["warmup_epochs"], steps, advice.kd_updates,
                               advice.min_kd_updates, advice.synthesis_share, start["warmup_share"],
                               start["min_budget_s"], advice.below_floor)
        message = advice.message(self.sizing.get("device", str(self.device)))
        self.sizing = {**self.sizing, "calibrate": False, "advice": advice.to_dict(), "message": message,
                       "warnings": [message] if advice.below_floor else [],
                       "budget_values": {**self.sizing["budget_values"], "kd_steps": steps},
                       "derived": {**self.sizing["derived"], "kd_steps": steps},
                       "calibrated": {"synthesis_s": synth_s, "kd_step_s": kd_s / kd_steps, "kd_steps": steps,
                                      "planned_kd_steps": planned, "synthesis_share": advice.synthesis_share}}
        self.st.sizing = self.sizing
        self.config = planning.with_values(self.config, {"kd_steps": steps})
        self._log(f"KD steps per epoch {planned} -> {steps}, measured on the first full epoch (synthesis {synth_s:.1f} s, "
                  f"KD step {kd_s / kd_steps:.2f} s, synthesis share {advice.synthesis_share:.2f}); {message}")
        self._emit("sizing", {"config": self.config.model_dump(mode="json"), **self.sizing})

    def _epoch_metrics(self, images_before: int, synth_before: float) -> dict[str, Any]:
        hist_t, hist_l = self.pool.histogram("teacher_argmax"), self.pool.histogram("labels")
        synth_dt = self.st.synth_s - synth_before
        stats = self._epoch_stats
        batches = stats.get("batches", 0.0)
        return {
            "epoch": self.st.epoch,
            "student_loss": dict(zip(self.names, self.st.last_losses)),
            "pool_size": len(self.pool),
            "label_histogram": hist_l,
            "label_balance": balance(hist_l),
            "requested_histogram": self._requested(),
            "requested_balance": balance(self._requested()) if self._requested() else None,
            "teacher_argmax_histogram": hist_t,
            "pool_balance": balance(hist_t),
            "teacher_confidence": stats["confidence"] / batches if batches else None,
            "recognised_rate": stats["recognised"] / batches if batches else None,
            "dropped_images": int(stats.get("dropped", 0)),
            "images_per_s": (self.st.images_synthesized - images_before) / synth_dt if synth_dt > 0 else None,
            "synthesis_loss": dict(getattr(self, "synth_terms", {})),
            "lr": self.students.optimizers[0].param_groups[0]["lr"],
            "elapsed_s": self.elapsed,
        }

    def _requested(self) -> list[int] | None:
        """Every label the balanced queue has handed out (None for i.i.d. labels)."""
        taken = getattr(self.labels, "taken", None)
        return None if taken is None else taken.tolist()

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            **self.st.to_checkpoint(self.elapsed),
            **{key: part.state_dict() for key, part in self._components().items()},
            "rng": capture_rng_state(self.device),
        }

    def _save(self) -> None:
        if self.checkpoint_path is None:
            return
        t0 = self._clock()
        ckpt.save_checkpoint(self._state(), self.checkpoint_path)
        self._save_s = self._clock() - t0
        self.st.checkpoint_s += self._save_s
        self._emit("checkpoint", {"epoch": self.st.epoch})  # no path: events reach tenants

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.st = RunState.from_checkpoint(state)
            for key, part in self._components().items():
                part.load_state_dict(state[key])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"run checkpoint {self.checkpoint_path} is inconsistent: {str(exc).splitlines()[0][:200]}") from None
        restore_rng_state(state["rng"], self.device)
        self.resumed_from = self.st.epoch

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = True) -> DistillResult:
        """Run to the budget (or cancellation); see the module docstring for reproducibility."""
        self._session_start = self._clock()  # a seconds budget counts set-up too
        self._setup()
        self.setup_s = self._clock() - self._session_start
        self.st.setup_s = self.setup_s
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._restore(ckpt.load_checkpoint(self.checkpoint_path, self.fingerprint))
            self._session_start = self._clock()
            # No path here: events reach the service's tenants, and file paths are the server's business.
            self._log(f"resumed from checkpoint at epoch {self.st.epoch}")
        else:
            self._log(
                f"distilling into {len(self.specs)} students with {len(self.mixture)} generators on {self.device}"
            )
        self._fix_kd_rates()
        status = Outcome.COMPLETED
        try:
            while not self._finished():
                images_before, synth_before = self.st.images_synthesized, self.st.synth_s
                self._epoch_stats = {}
                outcome = self._run_epoch()
                if outcome is Outcome.CANCELLED:
                    status = Outcome.CANCELLED
                    break
                self.st.epoch += 1
                self._emit("metrics", self._epoch_metrics(images_before, synth_before))
                if outcome is Outcome.OUT_OF_TIME or self._finished():
                    break
                if self.st.epoch % self.config.checkpoint_every == 0:
                    self._save()
            if status is Outcome.COMPLETED:
                self.st.completed = True
                self._save()
                self._log("distillation completed")
            else:
                self._log("distillation cancelled")
            return self._result(status)
        finally:
            self.hooks.remove()

    # ------------------------------------------------------------------ result
    def _kd_ms_per_student(self) -> list[float]:
        """Each student's own forward + backward on one KD batch, in ms (dfmscd.costs): which student
        makes the shared steps slow. Measured on copies, under the run's precision and layout, at the
        full batch: measured on 32 images and scaled, an 8x8 mobilenetv2 came out 3x dearer than its
        real step (per-call overhead dominates small inputs), and a run then sized itself for a budget
        three times shorter."""
        x = torch.zeros(self.config.kd_batch_size, *self.card.input_shape, device=self.device)
        with self.students.autocast():
            return measure_kd_step_ms(self.students.modules, x.to(memory_format=self.memory_format))

    def _result(self, status: Outcome) -> DistillResult:
        t0 = self._clock()
        agreement: list[float | None] = [None] * len(self.specs)
        held_out = 0
        holdout = torch.empty(0, dtype=torch.uint8)
        if status is Outcome.COMPLETED and len(self.pool):
            agreement, held_out, holdout = held_out_agreement(  # type: ignore[assignment]
                mixture=self.mixture, students=self.students, teacher=self.teacher, hooks=self.hooks,
                weights=self.weights, augment=self.augment, config=self.config,
                num_classes=self.card.num_classes, to_input=lambda u8: self._to_input(u8, augment=False),
                adversarial=False, amp_dtype=self.amp_dtype, memory_format=self.memory_format,
            )  # fmt: skip
        diversity = pool_diversity(self.teacher, self.pool, lambda u8: self._to_input(u8, augment=False))
        samples, sample_labels = pick_samples(self.pool)
        calibration = pick_calibration(self.pool)
        # measured at the start when a rate or the budget needed it, else now (before the students leave the device)
        kd_ms = self._start_kd_ms or self._kd_ms_per_student()
        students = {n: m.cpu().eval().to(memory_format=torch.contiguous_format) for n, m in zip(self.names, self.students.modules)}
        eval_s = self._clock() - t0
        updates = {n: self.st.kd_steps_done * r for n, r in zip(self.names, self.st.kd_rates or [1] * len(self.names))}
        floor = self.config.min_kd_updates if self.budget.seconds is not None else 0
        flags = planning.student_flags(dict(zip(self.names, agreement)), updates, floor)
        warnings = list(self.sizing.get("warnings", [])) + list(flags.values())
        missing = planning.missing_classes(self.pool.histogram("teacher_argmax"), self.card.class_names)
        if missing and len(self.pool):
            shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            warnings.append(f"{len(missing)} of {self.card.num_classes} classes never reached the pool (by the teacher's "
                            f"argmax): {shown}; the students have not learnt them: give a larger budget")
        total_s = self.elapsed
        st = self.st
        budget_s = self.budget.seconds
        report = {
            "status": status.value,
            "config": self.config.model_dump(mode="json"),
            "budget": self.budget.model_dump(exclude_none=True),
            "device": str(self.device),
            "precision": {"autocast": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                          "channels_last": self.memory_format == torch.channels_last,
                          "channels_last_students": [n for n, f in zip(self.names, self.student_formats)
                                                     if f == torch.channels_last],
                          "pool_device": str(self.pool.device)},  # fmt: skip
            "epochs_completed": st.epoch,
            "warmup_epochs": self.warmup,
            "kd_steps": st.kd_steps_done,
            "kd_rates": dict(zip(self.names, st.kd_rates)),
            "resumed_from_epoch": self.resumed_from,
            "num_generators": len(self.mixture),
            "generator_partners": [self.names[p] for p in self.mixture.partners],
            "generator_conditional": [g.num_classes > 0 for g in self.mixture.generators],
            "students": {
                name: {
                    "architecture": spec.architecture,
                    "params": count_parameters(students[name]),
                    "final_loss": loss,
                    "teacher_agreement": agr,
                    "kd_ms_per_step": ms,
                    "kd_updates": updates[name],
                    "flag": flags.get(name),
                }
                for name, spec, loss, agr, ms in zip(self.names, self.specs, st.last_losses, agreement, kd_ms)
            },
            "sizing": self.sizing,
            "warnings": warnings,
            "held_out_images": held_out,
            "timings": {
                "total_s": total_s, "setup_s": self.setup_s, "synthesis_s": st.synth_s, "kd_s": st.kd_s,
                "checkpoint_s": st.checkpoint_s, "evaluation_s": eval_s,
                "other_s": max(0.0, total_s - st.synth_s - st.kd_s - st.checkpoint_s - eval_s - self.setup_s),
                "budget_s": budget_s,
                "over_budget_s": (total_s - budget_s) if budget_s is not None else None,
            },  # fmt: skip
            "images_synthesized": st.images_synthesized,
            "images_per_s": st.images_synthesized / total_s if total_s > 0 else None,
            "synthesis_images_per_s": st.images_synthesized / st.synth_s if st.synth_s > 0 else None,
            "kd_steps_per_s": st.kd_steps_done / st.kd_s if st.kd_s > 0 else None,
            "pool": {**pool_report(self.pool), "diversity": diversity, "requested_histogram": self._requested(),
                     "requested_balance": balance(self._requested()) if self._requested() else None},
            "class_names": list(self.card.class_names) if self.card.class_names else None,
            "missing_classes": missing,
        }
        return DistillResult(status.value, students, dict(self.student_cards), report, samples, sample_labels,
                             calibration=calibration, holdout=holdout)
