"""One typed configuration for a DF-MSCD run, with named presets.

Every knob of the algorithm lives here so that a run is fully described by one JSON object:
the service stores the resolved config with each job, the CLI writes it into the report, and
ablations are a matter of switching fields (``label_bridging``, ``student_adv``,
``peer_beta``, ``num_generators``) rather than code paths.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dfmscd.errors import ConfigError

_TEN_YEARS_S = 10 * 365 * 86400


class Budget(BaseModel):
    """How long a run may go: a number of epochs, or wall-clock seconds (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=100_000)
    seconds: float | None = Field(default=None, gt=0, le=30 * 86400)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        if (self.epochs is None) == (self.seconds is None):
            raise ValueError("budget needs exactly one of 'epochs' or 'seconds'")
        return self

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse the text forms (``300s``, ``5m``, ``2h``, ``40e``, ``40 epochs``): see ``parse_budget``."""
        return parse_budget(text)


FAST_DFKD_WARMUP_SHARE = 20 / 220  # Fast-DFKD's CIFAR schedule: 20 warm-up epochs of 220


class DistillConfig(BaseModel):
    """Hyperparameters of one DF-MSCD run. Field names are the public API (HTTP and CLI)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- synthesis (Fast-DFKD meta-generator) ---
    synth_batch_size: int = Field(256, ge=2, le=4096, description="images per generator per synthesis step")
    latent_dim: int = Field(256, ge=4, le=4096)
    generator_width: int = Field(64, ge=4, le=1024, description="base channel count of the generator")
    conditional_generator: bool = Field(True, description="add a learned embedding of the requested label to z (Fast-DFKD: off)")
    lr_g: float = Field(5e-3, gt=0, le=10)
    lr_z: float = Field(0.015, gt=0, le=10)
    inner_steps: int = Field(2, ge=1, le=1000, description="inner steps on the fast generator clone")
    meta_algorithm: Literal["reptile", "fomaml"] = "reptile"
    bn: float = Field(10.0, ge=0, le=1e4, description="weight of the BatchNorm-statistics loss")
    oh: float = Field(0.5, ge=0, le=1e4, description="weight of the one-hot (class) loss")
    adv: float = Field(1.33, ge=0, le=1e4, description="weight of the teacher-student adversarial loss")
    bn_momentum: float = Field(0.9, ge=0, lt=1, description="blending of past batches' BN statistics")
    augment: bool = True
    augment_flip: bool | None = Field(None, description="random horizontal flips in augmentation; None: only for 3-channel inputs")
    reset_first_layer_epoch: int | None = Field(120, ge=1, description="re-initialise the generator's first layer at this epoch")
    warmup_epochs: int = Field(20, ge=0, le=100_000, description="epochs that only synthesize")

    # --- students (knowledge distillation) ---
    temperature: float = Field(20.0, gt=0, le=1000)
    student_optimizer: Literal["sgd", "adam"] = "sgd"
    lr_s: float = Field(0.2, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    kd_steps: int = Field(400, ge=1, le=100_000, description="student updates per epoch")
    kd_batch_size: int = Field(256, ge=2, le=4096)
    kd_max_rate: int = Field(1, ge=1, le=16, description=(
        "up to this many updates per shared KD step for a student that costs that many times less than the "
        "costliest one (measured at the start of a run, kept on resume); 1: every student takes every step once"))
    epochs: int = Field(220, ge=1, le=100_000, description="epochs when the budget gives none")

    # --- DF-MSCD additions (each switchable for ablations) ---
    label_bridging: bool = Field(True, description="balanced label queue across synthesis steps")
    bridge_correction: float = Field(0.5, ge=0, le=1, description="share of labels steered to under-recognised classes")
    student_adv: float = Field(1.0, ge=0, le=1e4, description="weight of the inter-student disagreement term in the generator loss")
    peer_beta: float = Field(0.5, ge=0, le=1e4, description="weight of the peer (student-student) KD term")
    num_generators: int | None = Field(None, ge=1, le=64, description="None: one per student")
    diversity: float = Field(0.1, ge=0, le=1e4, description="weight of the term keeping generators apart")
    unconditional_generators: int = Field(0, ge=0, le=64, description=(
        "with conditional_generator on: this many of the mixture's generators (the last ones, never all) are "
        "unconditional, writing class-ambiguous samples beside the conditional ones' class-covering samples"))
    generator_reset_every: int | None = Field(None, ge=1, description="re-initialise generators every N epochs")

    # --- pool of synthesized images ---
    pool_capacity: int = Field(60_000, ge=16, le=10_000_000)
    pool_eviction: Literal["fifo", "reservoir"] = "fifo"
    kd_sampling: Literal["uniform", "balanced"] = Field(
        "balanced", description="KD batches drawn uniformly from the pool, or balanced over the teacher's argmax classes")
    pool_admission: Literal["all", "recognised", "balanced"] = Field(
        "all", description=("'recognised': only images the teacher classifies as the requested label enter the pool; "
                            "'balanced': images of classes already ahead (by teacher argmax) are turned away, "
                            "keeping the pool's balance >= 0.85"))

    # --- sizing (dfmscd.sizing): the per-epoch work derived from the input, the device and the budget ---
    auto_size: bool = Field(False, description=(
        "derive the generator's size, the pool's capacity, the batches (on a GPU) and, under a seconds budget, "
        "the KD steps per epoch and the warm-up from the card, the device and the costs measured at the start; "
        "fields in 'pinned' keep their values"))
    synthesis_share: float = Field(0.3, gt=0, lt=1, description=(
        "auto_size with a seconds budget: the share of each epoch's time (after warm-up) spent synthesizing"))
    min_kd_updates: int = Field(500, ge=0, le=10_000_000, description=(
        "the KD updates each student needs; a seconds budget that buys fewer gets a smaller synthesis share and "
        "warm-up (auto_size), and a warning naming the budget that would do"))
    pinned: list[str] = Field(default_factory=list, description=(
        "fields set explicitly (resolve_config records the overrides): sizing never changes them"))

    # --- runtime ---
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    checkpoint_every: int = Field(10, ge=1, le=100_000, description="epochs between checkpoints")
    autocast: Literal["auto", "off", "bf16"] = Field(
        "auto", description="mixed precision for teacher and students: auto = bf16 on CUDA, off on CPU")
    channels_last: bool | None = Field(
        None, description=("channels-last layout for the networks; None: all on CUDA; on CPU those with depthwise "
                           "convolutions, and all from 16x16 inputs up"))
    pool_on_device: bool | None = Field(None, description="keep the pool on the accelerator; None: on CUDA when it fits in 2 GiB")

    def single_student_baseline(self) -> "DistillConfig":
        """The Fast-DFKD baseline: one generator, i.i.d. labels, no peer or inter-student terms,
        an unconditional generator that is never re-initialised as a whole (its first layer is, at
        ``reset_first_layer_epoch``, as in Fast-DFKD), uniform KD batches over everything synthesized, and
        Fast-DFKD's published warm-up share (20 of 220 epochs, at least one epoch) of the config's
        epochs; a seconds budget scales it to the time (``warmup_epochs / epochs`` of it)."""
        return self.model_copy(
            update=dict(
                warmup_epochs=max(1, min(self.epochs - 1, round(self.epochs * FAST_DFKD_WARMUP_SHARE))) if self.epochs > 1 else 0,
                label_bridging=False,
                student_adv=0.0,
                peer_beta=0.0,
                num_generators=1,
                diversity=0.0,
                generator_reset_every=None,
                conditional_generator=False,
                kd_sampling="uniform",
                pool_admission="all",
            )
        )


# Presets: `quality` is Fast-DFKD's published CIFAR setting; `balanced` and `fast` shrink the
# per-epoch work so that small inputs (8x8 digits on a 2-core CPU) finish in minutes / seconds.
PRESETS: dict[str, dict[str, Any]] = {
    "quality": {},
    "balanced": dict(
        synth_batch_size=128,
        latent_dim=64,
        generator_width=32,
        # Tuned on the digits validation split, 2-core CPU (docs/benchmarks.md, "Preset choices"):
        # more inner adaptation, a larger class weight and a faster generator step get the teacher
        # to recognise 0.92 of the requested labels by epoch 9 instead of 0.15-0.31 at epoch 3;
        # fewer KD steps per epoch give the generators more meta steps in a fixed time (KD was 90%
        # of a 60 s run), and a longer warm-up (1/6 of the time) keeps KD off the first,
        # unrecognisable pool images.
        inner_steps=4,
        lr_g=0.01,
        oh=3.0,
        kd_steps=20,
        kd_batch_size=128,
        epochs=60,
        warmup_epochs=10,
        reset_first_layer_epoch=None,
        # MNIST validation split, 300 CPU-s, seed 0 (docs/benchmarks.md, "Sizing rules"): lenet5_half/resnet8/
        # wrn_16_1 val .939/.926/.958 at 0.1 against .919/.865/.931 at 0.05 and .891/.950/.938 at 0.2.
        # With auto_size, inputs up to 16x16 get half of it (dfmscd.sizing.SMALL_INPUT_LR_SCALE).
        lr_s=0.1,
        temperature=4.0,
        pool_capacity=20_000,
        checkpoint_every=5,
        # Digits validation split, 300 CPU-s, val resnet8/vgg8/mobilenetv2 (docs/benchmarks.md, "Preset choices"):
        # re-initialising the generators every 4 epochs raised the pool's within-class diversity
        # (0.88 -> 1.77 of real images; seed 0 val .939/.939/.928 -> .958/.953/.942); balanced
        # admission holds the pool's balance at 0.85 (3 seeds; 0.58 before); four updates per shared
        # step for the cheap students gave 3-seed val .970/.953/.906 against .943/.945/.931 without.
        generator_reset_every=4,
        pool_admission="balanced",
        kd_max_rate=4,
        # Digits validation split, 300 CPU-s, a slower 2-core AMD machine (docs/benchmarks.md, "Preset choices"):
        # the last generator of the mixture unconditional. Val resnet8/vgg8/mobilenetv2, mean of four
        # runs (seeds 0-1, twice) .951/.942/.886 against .943/.943/.853 (two runs) with all conditional;
        # pool balance held at 0.85. Two unconditional: .949/.946/.857 but balance 0.69-0.76; all
        # unconditional: .942/.940/.831, balance 0.53-0.55.
        unconditional_generators=1,
        # The generator, the pool and, under a seconds budget, the KD steps per epoch and the warm-up
        # follow the input, the device and the measured costs (dfmscd.sizing; docs/benchmarks.md,
        # "Sizing rules"); at 8x8 the shape rules give this preset's values above.
        auto_size=True,
    ),
    "fast": dict(
        synth_batch_size=64,
        latent_dim=32,
        generator_width=16,
        # Few epochs leave the meta-generator little time to learn, so each batch gets more
        # inner adaptation and the class term outweighs the BN term, which is what gets the teacher
        # to recognise the requested labels, i.e. a balanced pool (tuned on
        # the synthetic 8x8 task of tests/dfmscd, never on benchmark data).
        inner_steps=5,
        lr_g=0.02,
        bn=3.0,
        oh=3.0,
        bn_momentum=0.5,
        kd_steps=10,
        kd_batch_size=64,
        epochs=10,
        warmup_epochs=1,
        reset_first_layer_epoch=None,
        lr_s=0.05,
        temperature=4.0,
        pool_capacity=4_000,
        checkpoint_every=2,
    ),
}


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
        return f"{loc}: {err.get('msg')}"
    return str(exc)


# One budget grammar for the CLI (--budget) and the HTTP API ("budget": "5m"): a number and a unit.
# A bare number is refused rather than guessed: "40" could mean seconds or epochs.
_SECOND_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
}
_EPOCH_UNITS = ("e", "ep", "epoch", "epochs")
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")
BUDGET_FORMS = ("seconds ('300s', '5m', '2h', '90 minutes') or epochs ('40e', '40 epochs'); "
                "over HTTP also {\"seconds\": 300} or {\"epochs\": 40}")


def parse_budget(value: "str | dict[str, Any] | Budget") -> Budget:
    """A Budget from its text form or its object form; ConfigError showing the expected shape.

    Text: a number then a unit, case and spaces ignored: s/sec/seconds, m/min/minutes,
    h/hours (wall-clock) or e/epochs (a whole number). Objects: exactly one of
    ``seconds``/``epochs``.
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, dict):
        try:
            return Budget.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            raise ConfigError(f"budget{'.' + loc if loc else ''}: {msg} (expected {BUDGET_FORMS})") from None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"invalid budget {value!r}: expected {BUDGET_FORMS}")
    text = str(value)
    match = _BUDGET_RE.match(text.lower())
    if match is None:
        raise ConfigError(f"invalid budget {text!r}: expected {BUDGET_FORMS}")
    number, unit = match.groups()
    if not unit:
        raise ConfigError(f"invalid budget {text!r}: a number needs a unit: '{number}s' (seconds) or '{number}e' (epochs)")
    try:
        if unit in _EPOCH_UNITS:
            if float(number) != int(float(number)):
                raise ConfigError(f"invalid budget {text!r}: epochs must be a whole number")
            return Budget(epochs=int(float(number)))
        if unit in _SECOND_UNITS:
            return Budget(seconds=float(number) * _SECOND_UNITS[unit])
    except ValidationError as exc:
        raise ConfigError(f"invalid budget {text!r}: {_first_error(exc)}") from None
    raise ConfigError(f"invalid budget {text!r}: unknown unit {unit!r}; expected {BUDGET_FORMS}")


_SIZABLE_NAMES = ("generator_width", "latent_dim", "pool_capacity", "synth_batch_size", "kd_batch_size", "lr_s",
                  "kd_steps", "warmup_epochs")  # dfmscd.sizing.SIZABLE (a test keeps the two equal)


def resolve_config(preset: str = "balanced", overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Preset values, then user overrides, validated. Raises ConfigError with the first problem."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    pinned = sorted({*overrides.get("pinned", []), *(k for k in overrides if k != "pinned")} & set(_SIZABLE_NAMES))
    values = {**PRESETS[preset], **overrides, "pinned": pinned}
    try:
        return DistillConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid hyperparameters: {_first_error(exc)}") from None
    except TypeError as exc:
        raise ConfigError(f"invalid hyperparameters: {exc}") from None


def resolve_budget(config: DistillConfig, budget: Budget | None) -> Budget:
    """No budget given means the config's epoch count."""
    return budget if budget is not None else Budget(epochs=config.epochs)


__all__ = ["BUDGET_FORMS", "Budget", "DistillConfig", "PRESETS", "parse_budget", "resolve_config", "resolve_budget"]
