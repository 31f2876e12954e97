"""Typed config: YAML + overrides, type coercion, clear errors, resolved-config round trip."""

from __future__ import annotations

import csv

import pytest
import yaml

from audiorq.atomic import append_csv_rows, atomic_write_text
from audiorq.config import AugmentConfig, ConfigError, FrontendConfig, from_dict, load_config, save_config, to_dict


def test_overrides_are_typed_and_nested(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("chain: [mixup, rrc]\nrq:\n  bins: 8\n")
    cfg = load_config(AugmentConfig, recipe, ["rq.bins=3", "rq.per=instance", "rrc.freq_scale=[0.5, 1.0]", "chain=rrc,rq"])
    assert cfg.rq.bins == 3 and isinstance(cfg.rq.bins, int)
    assert cfg.rq.per == "instance" and cfg.rrc.freq_scale == (0.5, 1.0)
    assert cfg.chain == ["rrc", "rq"]
    assert cfg.rq.random_values is True  # untouched defaults survive


def test_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*rq.binz"):
        load_config(AugmentConfig, None, ["rq.binz=3"])
    with pytest.raises(ConfigError, match="rq.bins must be int"):
        load_config(AugmentConfig, None, ["rq.bins=many"])
    with pytest.raises(ConfigError, match="rq.bins must be an integer >= 1"):
        load_config(AugmentConfig, None, ["rq.bins=0"])
    with pytest.raises(ConfigError, match="rq.random_bins must be true/false"):
        load_config(AugmentConfig, None, ["rq.random_bins=maybe"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(AugmentConfig, None, ["rq.bins"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(AugmentConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="freq_scale must have 2 items"):
        load_config(AugmentConfig, None, ["rrc.freq_scale=[1]"])
    with pytest.raises(ConfigError, match="backend"):
        load_config(FrontendConfig, None, ["backend=essentia"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(AugmentConfig, None, ["rq.bins=15", "mixup.ratio=0.2"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    again = from_dict(AugmentConfig, yaml.safe_load(path.read_text()))
    assert again == cfg and to_dict(again) == to_dict(cfg)


def test_atomic_csv_append_keeps_old_rows_and_columns(tmp_path):
    path = tmp_path / "scores.csv"
    append_csv_rows(path, [{"a": 1, "b": 2}], ["a", "b"])
    append_csv_rows(path, [{"a": 3, "c": 4}], ["a", "c"])
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]
    atomic_write_text(tmp_path / "x.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "x.txt"]
