"""Typed configuration: dataclasses, YAML recipes, dotted ``key=value`` overrides, validation."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from audiorq.atomic import atomic_write_text
# The generic machinery lives in audiorq.schema; its names stay importable from here.
from audiorq.schema import ConfigError, apply_overrides, from_dict, to_dict
from audiorq.schema import check_choice as _check_choice
from audiorq.schema import check_prob as _check_prob

T = TypeVar("T")

SAMPLE_RATE = 16000  # every waveform inside audiorq is 16 kHz mono (docs/architecture.md)
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # shipped in the wheel; the checkout's recipes/
MEL_SCALES = ("slaney", "htk")
FRONTEND_BACKENDS = ("torchaudio", "nnaudio", "librosa", "torch")


@dataclasses.dataclass
class FrontendConfig:
    """Log-mel frontend parameters; the defaults are the conventions of docs/architecture.md."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    mel_scale: str = "slaney"  # slaney | htk
    backend: str = "torchaudio"  # torchaudio | nnaudio | librosa | torch

    def validate(self) -> None:
        for key in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"frontend.{key} must be >= 1, got {getattr(self, key)}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"frontend.win_length ({self.win_length}) must be <= frontend.n_fft ({self.n_fft})")
        _check_choice("frontend.mel_scale", self.mel_scale, MEL_SCALES)
        _check_choice("frontend.backend", self.backend, FRONTEND_BACKENDS)
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")


@dataclasses.dataclass
class RQConfig:
    """Randomized quantization options (paper §3.2)."""

    bins: int = 5
    random_bins: bool = True
    random_values: bool = True
    per: str = "channel"  # channel (each mel bin) | instance
    p: float = 1.0

    def validate(self) -> None:
        check_rq_options(self.bins, self.per, self.p, "augment.rq.")


RQ_PER = ("channel", "instance")
# Upper bound on RQ bins: far more levels than a row has values (96 frames, or 64 x 96 per instance), and
# small enough that the (rows, bins) cut points of a batch fit in memory; bigger is refused before allocating.
MAX_RQ_BINS = 4096


def check_rq_options(bins: Any, per: str, p: float, prefix: str = "RandomizedQuantization: ") -> None:
    """The one check of RQ's options (config, module and function all call it); ConfigError names the key.

    bins must be in [1, MAX_RQ_BINS] (4096), per in RQ_PER, p in [0, 1].
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_RQ_BINS:
        raise ConfigError(f"{prefix}bins must be an integer >= 1 and <= {MAX_RQ_BINS}, got {bins!r}")
    _check_choice(f"{prefix}per", per, RQ_PER)
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}p must be a number in [0, 1], got {p!r}") from None
    _check_prob(f"{prefix}p", p)


@dataclasses.dataclass
class RRCConfig:
    """BYOL-A random resize crop on log-mel."""

    virtual_crop_scale: tuple[float, float] = (1.0, 1.5)
    freq_scale: tuple[float, float] = (0.6, 1.5)
    time_scale: tuple[float, float] = (0.6, 1.5)
    interpolation: str = "bicubic"

    def validate(self) -> None:
        _check_choice("augment.rrc.interpolation", self.interpolation, ("bicubic", "bilinear", "nearest"))
        for name in ("virtual_crop_scale", "freq_scale", "time_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"augment.rrc.{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")


@dataclasses.dataclass
class MixupConfig:
    """BYOL-A log-mixup-exp with a memory bank of past inputs."""

    ratio: float = 0.4
    memory_size: int = 2048
    log_mixup_exp: bool = True

    def validate(self) -> None:
        _check_prob("augment.mixup.ratio", self.ratio)
        if self.memory_size < 1:
            raise ConfigError(f"augment.mixup.memory_size must be >= 1, got {self.memory_size}")


@dataclasses.dataclass
class AugmentConfig:
    """The augmentation chain applied to each view, in order; names from `AUGMENTATIONS`."""

    chain: list[str] = dataclasses.field(default_factory=lambda: ["rrc", "rq"])
    rq: RQConfig = dataclasses.field(default_factory=RQConfig)
    rrc: RRCConfig = dataclasses.field(default_factory=RRCConfig)
    mixup: MixupConfig = dataclasses.field(default_factory=MixupConfig)
    # joint: one mean/std over both views of a batch (BYOL-A); per_view: each view its own (audiorq 0.1).
    post_norm: str = "joint"

    def validate(self) -> None:
        _check_choice("augment.post_norm", self.post_norm, POST_NORMS)
        for name in self.chain:
            _check_choice("augment.chain item", name, AUGMENTATIONS)
        if len(set(self.chain)) != len(self.chain):
            raise ConfigError(f"augment.chain names an augmentation twice: {self.chain}")
        self.rq.validate()
        self.rrc.validate()
        self.mixup.validate()


AUGMENTATIONS = ("rq", "rrc", "mixup")
POST_NORMS = ("joint", "per_view")


# ----------------------------------------------------------------------------------------------
# Recipes: YAML files by path or shipped name.


def recipe_names() -> list[str]:
    """Names of the recipes shipped with audiorq (`quick`, `byola_rq`, ...)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def resolve_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe path, or the name of a shipped recipe (`quick`, `byola_rq.yaml`) -> its file."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    name = str(recipe)
    if os.sep not in name and "/" not in name:
        shipped = RECIPE_DIR / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
        if shipped.is_file():
            return shipped
    raise ConfigError(f"recipe not found: {recipe} (a YAML path, or one of: {', '.join(recipe_names())})")


def read_recipe(recipe: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a recipe (path or shipped name); ConfigError naming the file if it is not one."""
    path = resolve_recipe(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        # The first line says what; the rest is a drawing of the spot, which does not fit a one-line error.
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = str(getattr(e, "problem", None) or e).strip().splitlines()[0]
        raise ConfigError(f"recipe {path} is not valid YAML: {reason}{where}") from None
    except OSError as e:
        raise ConfigError(f"recipe {path} cannot be read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    return data


def recipe_section(cls: type[T], recipe: str | os.PathLike, section: str,
                   overrides: list[str] | tuple[str, ...] = ()) -> T:
    """One validated section of a recipe (e.g. `frontend` as FrontendConfig), defaults where it is absent."""
    data = read_recipe(recipe).get(section) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {recipe}: {section} must be a mapping, got {data!r}")
    try:
        cfg = from_dict(cls, apply_overrides(data, overrides), section + ".")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"recipe {recipe}: {e}") from None
    return cfg


def load_config(cls: type[T], recipe: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load dataclass `cls` from an optional recipe (path or shipped name) plus ``key=value`` overrides, validated."""
    data = read_recipe(recipe) if recipe is not None else {}
    cfg = from_dict(cls, apply_overrides(data, overrides))
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Run `validate()` on the config (which validates its sections)."""
    if hasattr(cfg, "validate"):
        cfg.validate()


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Pretraining (audiorq.train). The defaults are the paper's recipe (recipes/byola_rq.yaml), so an
# ablation recipe only names the keys it changes.


@dataclasses.dataclass
class ModelConfig:
    """AudioNTT2020 encoder + BYOL heads and EMA target."""

    d: int = 2048
    hidden_dim: int = 4096  # projector / predictor hidden width
    proj_dim: int = 256  # projector / predictor output width
    dropout: float = 0.3
    ema_decay: float = 0.99
    ema_schedule: str = "constant"  # constant | cosine (decay ramps from ema_decay to 1 over the run)
    sync_bn: bool = False  # SyncBatchNorm across ranks under DDP
    # separate: each view through the networks on its own, so BatchNorm sees B samples of one view (BYOL-A);
    # joint: both views as one 2B batch (audiorq 0.1; one launch per layer instead of two).
    bn_views: str = "separate"
    init: str = ""  # warm start: an encoder file the probe loads (run folder, checkpoint.pt, encoder.pth, .safetensors)
    freeze_encoder_steps: int = 0  # the first N steps train only the heads (encoder in eval mode, no gradient)

    def validate(self) -> None:
        for key in ("d", "hidden_dim", "proj_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        _check_choice("model.bn_views", self.bn_views, BN_VIEWS)
        if self.freeze_encoder_steps < 0:
            raise ConfigError(f"model.freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")
        _check_prob("model.dropout", self.dropout)
        _check_prob("model.ema_decay", self.ema_decay)
        _check_choice("model.ema_schedule", self.ema_schedule, ("constant", "cosine"))


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (per optimizer step)."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "constant"  # constant | cosine (to 0 at the end of the run)
    warmup_epochs: float = 0.0  # linear warmup from 0
    # BYOL leaves BatchNorm parameters and biases (every 1-d parameter) out of weight decay; true decays them too.
    decay_norm_and_bias: bool = False

    def validate(self) -> None:
        _check_choice("optim.name", self.name, ("adam", "adamw", "sgd"))
        _check_choice("optim.schedule", self.schedule, ("constant", "cosine"))
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.momentum < 0:
            raise ConfigError("optim.weight_decay, optim.momentum and optim.warmup_epochs must be >= 0")


BN_VIEWS = ("separate", "joint")

# What a saved config written before a key existed meant by its absence: the behaviour of that older
# version, so its runs resume (and restart) exactly as they would have.
LEGACY_VALUES: dict[str, Any] = {
    "augment.post_norm": "per_view",
    "model.bn_views": "joint",
    "model.init": "",
    "model.freeze_encoder_steps": 0,
    "optim.decay_norm_and_bias": True,
    "data.shuffle_buffer": 500,  # read only by data.kind=webdataset, which older versions did not have
}

DATA_KINDS = ("wave", "logmel", "webdataset")
# torch.compile's modes; on CUDA the last two replay each step as CUDA graphs (CPU runs ignore that part).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
MAX_CROP_SEC = 3600.0  # an hour per crop is already far past any pretraining recipe; inf would overflow


@dataclasses.dataclass
class DataConfig:
    """Pretraining data: a folder / file list of audio (kind wave), prepared log-mel shards (kind logmel), or
    WebDataset tar shards of audio files or float16 log-mel (kind webdataset)."""

    source: str = ""  # audio folder, text file of paths, shard root (logmel), shard folder / index / brace pattern
    kind: str = "wave"  # wave | logmel | webdataset
    crop_sec: float = 0.95  # random crop per clip (wave)
    crop_frames: int = 96  # random crop per item (logmel)
    num_workers: int = 4  # DataLoader worker processes per rank (decoding)
    shuffle_buffer: int = 500  # webdataset: undecoded samples each worker shuffles in memory (0: tar order)
    cache_dir: str | None = None  # AudioFolder header cache, WebDataset shard counts (None: ~/.cache/audiorq)
    norm_stats: list[float] | None = None  # [mean, std] of log-mel; None = computed before training
    stats_items: int = 10000  # clips used to compute norm_stats
    max_bad_fraction: float = 0.05  # stop when this share of loaded items was unreadable
    bad_check_after: int = 200  # ... once at least this many items were loaded

    def validate(self) -> None:
        _check_choice("data.kind", self.kind, DATA_KINDS)
        _check_prob("data.max_bad_fraction", self.max_bad_fraction)
        if not 0 < self.crop_sec <= MAX_CROP_SEC or self.crop_frames < 8:
            raise ConfigError(f"data.crop_sec must be in (0, {MAX_CROP_SEC}] and data.crop_frames >= 8, got "
                              f"{self.crop_sec}, {self.crop_frames}")
        if self.bad_check_after < 0:
            raise ConfigError(f"data.bad_check_after must be >= 0, got {self.bad_check_after}")
        if self.num_workers < 0 or self.stats_items < 1 or self.shuffle_buffer < 0:
            raise ConfigError("data.num_workers and data.shuffle_buffer must be >= 0 and data.stats_items >= 1")
        if self.norm_stats is not None and (len(self.norm_stats) != 2 or not self.norm_stats[1] > 0
                                            or not all(map(math.isfinite, self.norm_stats))):
            raise ConfigError(f"data.norm_stats must be [mean, std] with std > 0, got {self.norm_stats}")


@dataclasses.dataclass
class LogConfig:
    """Progress bar, TensorBoard and JSONL metrics (rank 0 only)."""

    every_steps: int = 10  # metrics / progress refresh interval
    tensorboard: bool = True
    progress: bool = True  # tqdm bar

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ConfigError(f"log.every_steps must be >= 1, got {self.every_steps}")


@dataclasses.dataclass
class MonitorConfig:
    """Online evaluation while training (rank 0): kNN / linear accuracy on a labeled task, label-free health.

    Thresholds and costs: docs/architecture.md, "Online monitor".
    """

    task: str = ""  # a probe task name (esc10, us8k, csv, ...); "" = no kNN / linear evaluation
    data: str = ""  # the task's folder (the CSV file for task=csv)
    every_steps: int = 0  # also evaluate every N optimizer steps (0: at each epoch end only)
    max_clips: int = 400  # at most this many clips of the task's first split (class-stratified), train + test
    clip_sec: float = 2.0  # each clip padded / cropped to this length (0: the task's unit_sec); sets the cost
    k: int = 20  # neighbours of the cosine kNN classifier
    health: bool = True  # embedding / projection std and effective rank on every log step
    buffer_size: int = 512  # recent clip embeddings the effective rank is computed on
    collapse_std: float = 0.05  # warn when projection_std (1 = spread, 0 = one point) stays below this ...
    collapse_rank: float = 2.0  # ... or the effective rank of the embeddings stays below this ...
    collapse_checks: int = 3  # ... for this many log steps in a row

    def validate(self) -> None:
        if bool(self.task) != bool(self.data):
            raise ConfigError("monitor.task and monitor.data go together: set both (e.g. monitor.task=esc10 "
                              "monitor.data=DIR) or neither")
        if self.every_steps < 0 or self.max_clips < 4 or self.k < 1 or self.buffer_size < 2 or self.collapse_checks < 1:
            raise ConfigError("need monitor.every_steps >= 0, monitor.max_clips >= 4, monitor.k >= 1, "
                              "monitor.buffer_size >= 2 and monitor.collapse_checks >= 1")
        if not 0 <= self.clip_sec <= MAX_CROP_SEC:
            raise ConfigError(f"monitor.clip_sec must be in [0, {MAX_CROP_SEC}] (0: the task's unit_sec), got {self.clip_sec}")
        if self.collapse_std < 0 or self.collapse_rank < 0:
            raise ConfigError("monitor.collapse_std and monitor.collapse_rank must be >= 0")


MAX_SEED = 2**32 - 1  # derived generator seeds (seed * 1_000_003 + ...) must stay below 2**64


@dataclasses.dataclass
class PretrainConfig:
    """A pretraining run: `audiorq pretrain RECIPE.yaml [key=value ...]`."""

    out_dir: str = "runs/byola_rq"
    resume: str = "no"  # no | auto (continue from out_dir/checkpoint.pt if present) | path to a checkpoint
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun, the local rank's GPU)
    epochs: int = 100
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    batch_size: int = 256  # global batch, split across ranks
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (with GradScaler)
    compile: bool = False  # torch.compile the learner
    compile_mode: str = "default"  # with compile=true: default | reduce-overhead (CUDA graphs) | max-autotune
    channels_last: bool = True  # NHWC convolutions on CUDA (ignored on CPU)
    checkpoint_every_steps: int = 0  # also checkpoint every N steps (0: each epoch only)
    frontend: FrontendConfig = dataclasses.field(default_factory=FrontendConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)

    def validate(self) -> None:
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        if self.resume not in ("no", "auto") and not self.resume.endswith((".pt", ".pth")):
            raise ConfigError(f"resume must be no, auto or a checkpoint path (.pt), got {self.resume!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.epochs < 1 or self.batch_size < 2 or self.max_steps < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("need epochs >= 1, batch_size >= 2, max_steps >= 0, checkpoint_every_steps >= 0")
        if not self.out_dir:
            raise ConfigError("out_dir must be set")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.frontend.n_mels % 8:
            raise ConfigError(f"frontend.n_mels must be a multiple of 8 (AudioNTT2020), got {self.frontend.n_mels}")
        for section in (self.frontend, self.augment, self.model, self.optim, self.data, self.log, self.monitor):
            section.validate()
