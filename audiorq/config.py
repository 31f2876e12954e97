"""Typed configuration: dataclasses, YAML recipes, dotted ``key=value`` overrides, validation."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from audiorq.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema."""


@dataclasses.dataclass
class FrontendConfig:
    """Log-mel frontend parameters (design.md conventions)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    mel_scale: str = "slaney"  # slaney | htk
    backend: str = "torchaudio"  # torchaudio | nnaudio | librosa | torch

    def validate(self) -> None:
        _check_choice("frontend.mel_scale", self.mel_scale, ("slaney", "htk"))
        _check_choice("frontend.backend", self.backend, ("torchaudio", "nnaudio", "librosa", "torch"))
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
        if self.bins < 1:
            raise ConfigError(f"augment.rq.bins must be >= 1, got {self.bins}")
        _check_choice("augment.rq.per", self.per, ("channel", "instance"))
        _check_prob("augment.rq.p", self.p)


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

    def validate(self) -> None:
        for name in self.chain:
            _check_choice("augment.chain item", name, AUGMENTATIONS)
        self.rq.validate()
        self.rrc.validate()
        self.mixup.validate()


AUGMENTATIONS = ("rq", "rrc", "mixup")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_prob(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be in [0, 1], got {value}")


# ----------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, overrides, YAML I/O.


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and coercing types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys at this level: {', '.join(prefix + k for k in fields)}"
        )
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_dict(tp, value, key + ".")
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        item = args[0] if args else Any
        out = [_coerce(item, v, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key} must be true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (tuples become lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML scalars/lists."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load dataclass `cls` from an optional YAML recipe plus ``key=value`` overrides, then validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping at the top level")
    data = apply_overrides(data, overrides)
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Run `validate()` on the config (which validates its sections)."""
    if hasattr(cfg, "validate"):
        cfg.validate()


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
