"""Linear-probe protocol presets `byola` (BYOL-A IJCNN / RQ paper) and `evar` (docs/protocol.md §8)."""

from __future__ import annotations

import dataclasses

from audiorq.audio import PAD_CROP_POLICIES
from audiorq.config import ConfigError, _check_choice, apply_overrides, from_dict, to_dict
from audiorq.probe.classifier import LOSSES

NORM_SOURCES = ("train_or_all_folds", "first_split_train")


@dataclasses.dataclass
class ProbeConfig:
    """Everything that defines a linear-probe evaluation: embedding side and classifier side."""

    preset: str = "byola"
    # Embedding side (changes the cached embeddings).
    pad_crop: str = "byola"  # byola: pad both ends, random crop everywhere | evar: pad tail, test = head (§1.3)
    norm_files: int = 10000  # clips drawn for the task's log-mel mean/std (§1.5)
    # train_or_all_folds (P1): split 0's train set, or every file when validation is carved (LOOCV, US8K);
    # first_split_train (P2): split 0's train set.
    norm_source: str = "train_or_all_folds"
    seed: int = 42  # norm-stat draw and random crops
    embed_batch_size: int = 256
    # Classifier side (cheap to change: embeddings are reused).
    lr: float = 1e-3
    task_lr: dict[str, float] = dataclasses.field(default_factory=dict)  # per-task lr, by Task.name
    weight_decay: float = 1e-8
    batch_size: int = 200  # min(batch_size, n_train)
    max_epochs: int = 200
    patience: int = 10  # early stopping on validation accuracy; 0 = off (last epoch kept)
    runs: int = 10
    first_seed: int = 42  # run r uses seed first_seed + r
    loss: str = "ce"  # ce | ce_over_c (EVAR's mean over batch x classes of one-hot x log-softmax)
    valid_fraction: float = 0.1  # carved from train when a split has no validation set

    def validate(self) -> None:
        """ConfigError naming the key of the first value out of range."""
        _check_choice("probe.pad_crop", self.pad_crop, PAD_CROP_POLICIES)
        _check_choice("probe.norm_source", self.norm_source, NORM_SOURCES)
        _check_choice("probe.loss", self.loss, LOSSES)
        if self.lr <= 0 or any(v <= 0 for v in self.task_lr.values()):
            raise ConfigError(f"probe.lr and probe.task_lr values must be > 0, got {self.lr}, {self.task_lr}")
        if min(self.norm_files, self.embed_batch_size, self.batch_size, self.max_epochs, self.runs) < 1:
            raise ConfigError(
                "probe.norm_files, embed_batch_size, batch_size, max_epochs and runs must all be >= 1"
            )
        if self.patience < 0 or self.weight_decay < 0:
            raise ConfigError("probe.patience and probe.weight_decay must be >= 0")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"probe.valid_fraction must be in (0, 1), got {self.valid_fraction}")

    def lr_for(self, task_name: str) -> float:
        """The learning rate for a task: its `task_lr` entry, else `lr`."""
        return float(self.task_lr.get(task_name, self.lr))

    @property
    def seeds(self) -> list[int]:
        """The classifier seed of each run."""
        return [self.first_seed + r for r in range(self.runs)]


PRESETS: dict[str, ProbeConfig] = {
    # BYOL-A IJCNN paper + v1 evaluate.py (§8.1); the protocol the RQ paper's Table 9 follows.
    "byola": ProbeConfig(),
    # EVAR lineareval.py (§8.2): lr 3e-4 unless tuned per task (BYOL-A v2 README), patience 20,
    # 3 runs with seeds 42, 43, 44, CE/C loss, ~5k train clips for norm stats, head crop at test.
    "evar": ProbeConfig(
        preset="evar",
        pad_crop="evar",
        norm_files=5120,
        norm_source="first_split_train",
        lr=3e-4,
        task_lr={"us8k": 3e-5, "spcv2": 3e-5, "nsynth": 1e-3, "vc1": 4e-5, "voxforge": 1e-4, "esc50": 1e-3,
                 "surge": 3e-5, "gtzan": 1e-3},
        patience=20,
        runs=3,
        loss="ce_over_c",
    ),
}


def probe_config(
    preset: str | ProbeConfig = "byola", overrides: list[str] | tuple[str, ...] = (), **fields
) -> ProbeConfig:
    """A preset (name or ProbeConfig) with ``key=value`` overrides and then keyword fields applied, validated.

    A user-given `lr` (override or field) replaces the preset's per-task learning rates.
    """
    if not isinstance(preset, ProbeConfig) and preset not in PRESETS:
        raise ConfigError(f"unknown probe preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = preset if isinstance(preset, ProbeConfig) else PRESETS[preset]
    data = apply_overrides(to_dict(base), overrides)
    data.update({k: v for k, v in fields.items() if v is not None})
    if any(o.split("=", 1)[0].strip() == "lr" for o in overrides) or fields.get("lr") is not None:
        data["task_lr"] = {}
    cfg = from_dict(ProbeConfig, data, "probe.")
    cfg.validate()
    return cfg
