"""Linear-probe pipeline: encoders, norm stats, embeddings + cache, result files, errors, FSDD end to end."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from audiorq.audio import load_audio, pad_or_crop
from audiorq.config import ConfigError
from audiorq.data.tasks import Split, Task, TaskError
from audiorq.frontend import LogMelSpectrogram
from audiorq.models.ntt import AudioNTT2020
from audiorq.probe import (
    EncoderError,
    ProbeError,
    embed_task,
    format_table,
    linear_probe,
    load_encoder,
    parse_task_data,
    probe_config,
    read_scores,
    task_norm_stats,
)
from audiorq.probe.embed import norm_stats_files
from audiorq.probe.report import latest_summaries

SHARED = Path(os.environ.get("AUDIORQ_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
FSDD = SHARED / "fsdd" / "recordings"


@pytest.fixture(autouse=True)
def one_thread():
    # Small tensors: one thread avoids OpenMP hand-off costs on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tones(folder: Path, n_per_class: int, sr: int = 16000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Three classes of noisy tones (300 / 900 / 2500 Hz), 0.3-0.7 s long."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for c, freq in enumerate((300.0, 900.0, 2500.0)):
        for k in range(n_per_class):
            t = np.arange(int(sr * rng.uniform(0.3, 0.7))) / sr
            wave = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t) + 0.05 * rng.standard_normal(len(t))
            path = folder / f"c{c}_{k}.wav"
            sf.write(path, wave.astype(np.float32), sr)
            files.append(str(path))
            labels.append(c)
    return files, np.array(labels, dtype=np.int64)


def tone_task(folder: Path, n_per_class: int = 8, unit_sec: float = 0.5) -> Task:
    """Train/valid/test by item number within each class: 50 % / 25 % / 25 %."""
    files, labels = write_tones(folder, n_per_class)
    k = np.arange(len(files)) % n_per_class
    split = Split(
        "official",
        train=np.flatnonzero(k < n_per_class // 2),
        valid=np.flatnonzero((k >= n_per_class // 2) & (k < 3 * n_per_class // 4)),
        test=np.flatnonzero(k >= 3 * n_per_class // 4),
    )
    return Task("tones", ("low", "mid", "high"), unit_sec, tuple(files), labels, (split,))


def fold_task(folder: Path, n_per_class: int = 9, n_folds: int = 3) -> Task:
    files, labels = write_tones(folder, n_per_class, seed=1)
    fold = np.arange(len(files)) % n_folds
    splits = tuple(
        Split(f"fold{f + 1}", train=np.flatnonzero(fold != f), valid=None, test=np.flatnonzero(fold == f))
        for f in range(n_folds)
    )
    return Task("tonefolds", ("low", "mid", "high"), 0.5, tuple(files), labels, splits)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Task:
    return tone_task(tmp_path_factory.mktemp("tones"))


# ---------------------------------------------------------------------------------------------- encoders


def test_random_encoder_is_seeded():
    a, info_a = load_encoder("random:d=32,seed=3")
    b, info_b = load_encoder("random:d=32,seed=3")
    _, info_c = load_encoder("random:d=32,seed=4")
    assert info_a.weights_hash == info_b.weights_hash != info_c.weights_hash
    assert (info_a.d, info_a.n_mels, info_a.kind) == (32, 64, "random")
    x = torch.randn(2, 1, 64, 48)
    torch.testing.assert_close(a(x), b(x))
    assert a(x).shape == (2, 32) and not any(p.requires_grad for p in a.parameters())


def test_checkpoint_and_exported_state_dict_load_the_same_encoder(tmp_path):
    torch.manual_seed(0)
    model = AudioNTT2020(n_mels=64, d=24)
    (tmp_path / "run").mkdir()
    torch.save({k: v for k, v in model.state_dict().items()}, tmp_path / "run" / "encoder.pth")
    # Tensors and plain containers only, as the trainer writes them (pickled objects are refused).
    ckpt = {"encoder": model.state_dict(), "epoch": 3, "rng": [{"torch": torch.get_rng_state()}],
            "config": {"frontend": {"mel_scale": "htk", "n_mels": 64}}}
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    exported, info_e = load_encoder(str(tmp_path / "run"))  # a run folder: its encoder.pth
    from_ckpt, info_c = load_encoder(str(tmp_path / "checkpoint.pt"))
    assert (info_e.kind, info_e.d, info_e.n_mels) == ("state_dict", 24, 64)  # inferred from fc.0.weight
    assert info_c.kind == "checkpoint" and info_c.frontend.mel_scale == "htk"  # from the checkpoint config
    assert info_e.frontend.mel_scale == "slaney"
    assert info_e.weights_hash == info_c.weights_hash  # same weights -> same embedding cache
    x = torch.randn(3, 1, 64, 40)
    model.eval()
    torch.testing.assert_close(exported(x), model(x))
    torch.testing.assert_close(from_ckpt(x), model(x))


def test_bad_encoder_files_are_named(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "weird.pth")
    with pytest.raises(EncoderError, match="weird.pth.*not an AudioNTT2020"):
        load_encoder(str(tmp_path / "weird.pth"))
    with pytest.raises(EncoderError, match="nothere.pth: encoder not found"):
        load_encoder(str(tmp_path / "nothere.pth"))
    with pytest.raises(EncoderError, match="unknown option"):
        load_encoder("random:depth=3")


def test_logmel_baseline_pools_over_time():
    enc, info = load_encoder("logmel")
    x = torch.randn(2, 1, 64, 30)
    out = enc(x)
    assert info.d == 192 and out.shape == (2, 192)
    torch.testing.assert_close(out[:, :64], x[:, 0].mean(-1))
    torch.testing.assert_close(out[:, 64:128], x[:, 0].std(-1, unbiased=False))
    torch.testing.assert_close(out[:, 128:], x[:, 0].amax(-1))
    assert load_encoder("logmel:stats=mean+std")[1].d == 128


def test_presets_follow_the_protocols():
    b, e = probe_config("byola"), probe_config("evar")
    assert (b.lr, b.weight_decay, b.batch_size, b.max_epochs, b.patience, b.runs, b.loss, b.pad_crop) == (
        1e-3, 1e-8, 200, 200, 10, 10, "ce", "byola")
    assert (e.lr, e.patience, e.seeds, e.loss, e.pad_crop) == (3e-4, 20, [42, 43, 44], "ce_over_c", "evar")
    assert e.lr_for("us8k") == 3e-5 and e.lr_for("esc10") == 3e-4  # per-task lr, else the default
    assert probe_config("evar", ["lr=1e-4"]).lr_for("us8k") == 1e-4  # a user lr wins over the table
    assert probe_config(b, ["runs=2"]).seeds == [42, 43]
    with pytest.raises(ConfigError, match="probe.lrr"):
        probe_config("byola", ["lrr=1"])
    with pytest.raises(ConfigError, match="unknown probe preset"):
        probe_config("p3")


# ---------------------------------------------------------------------------------------------- norm stats


def test_norm_stats_equal_direct_computation(tones):
    config = probe_config("byola", norm_files=5)
    chosen = norm_stats_files(tones, config)
    assert len(chosen) == 5 and set(chosen) <= set(tones.splits[0].train)  # P1: training split only
    frontend = LogMelSpectrogram()
    mean, std = task_norm_stats(tones, config, frontend, progress=False)
    # Clips (<= 0.7 s) are shorter than unit_sec 0.75, so pad_or_crop only pads (no randomness).
    config = probe_config("byola", norm_files=100)
    task = Task(tones.name, tones.classes, 0.75, tones.files, tones.labels, tones.splits)
    mean, std = task_norm_stats(task, config, frontend, progress=False)
    lms = torch.cat([
        frontend(pad_or_crop(load_audio(task.files[i]), 12000, "byola"))[0, 0]
        for i in task.splits[0].train
    ], dim=-1)
    assert mean == pytest.approx(lms.double().mean().item(), rel=1e-6)
    assert std == pytest.approx(lms.double().std(unbiased=False).item(), rel=1e-5)


def test_norm_stats_draw_all_folds_for_cross_validation(tmp_path):
    task = fold_task(tmp_path)
    assert len(norm_stats_files(task, probe_config("byola"))) == len(task.files)  # P1: all folds
    assert set(norm_stats_files(task, probe_config("evar"))) == set(task.splits[0].train)  # P2: fold 1's train


# ---------------------------------------------------------------------------------------------- pipeline


def test_probe_writes_rows_appends_and_reuses_cache(tones, tmp_path):
    out = tmp_path / "out"
    first = linear_probe("random:d=16,seed=1", tones, runs=2, out_dir=out, progress=False)
    assert not first.embeddings.from_cache and first.embeddings.cache_path.is_file()
    assert len(first.rows) == 2 and {r["run"] for r in first.rows} == {0, 1}
    assert first.rows[0]["n_train"] == 12 and first.rows[0]["n_valid"] == 6 and first.rows[0]["n_test"] == 6
    rows = read_scores(out / "scores.csv")
    assert len(rows) == 2 and rows[0]["task"] == "tones" and rows[0]["preset"] == "byola"
    table = (out / "table.md").read_text()
    # A task outside the paper's six gets a table of its own: no empty paper cells, no "Avg" of "–".
    assert "| Model | tones |\n|---|---|\n| random-d16-seed1 [byola] | " in table and "74.1" not in table
    assert rows[0]["quick_look"] == ""

    # Second run: same encoder weights -> embeddings from the cache; a forward pass would raise.
    module, info = load_encoder("random:d=16,seed=1")

    def no_forward(*_):
        raise AssertionError("re-embedded despite a cache hit")

    module.forward = no_forward
    second = linear_probe((module, info), tones, runs=2, out_dir=out, progress=False)
    assert second.embeddings.from_cache
    assert [r["test_acc"] for r in second.rows] == [r["test_acc"] for r in first.rows]
    rows_after = read_scores(out / "scores.csv")
    assert len(rows_after) == 4 and rows_after[:2] == rows  # appended, earlier rows untouched
    assert rows_after[0]["probe_id"] != rows_after[2]["probe_id"]

    # A classifier-only change (lr) still hits the cache; an embedding-side change (preset) does not.
    assert linear_probe((module, info), tones, runs=1, out_dir=None, cache_dir=out / "cache", overrides=["lr=0.01"],
                        progress=False).embeddings.from_cache
    with pytest.raises(AssertionError, match="re-embedded"):
        linear_probe((module, info), tones, preset="evar", runs=1, out_dir=None, cache_dir=out / "cache",
                     progress=False)


def test_evar_embeds_test_clips_from_their_start(tmp_path):
    task = tone_task(tmp_path, n_per_class=4, unit_sec=0.25)  # clips (>= 0.3 s) are cropped
    module, info = load_encoder("logmel")
    emb = embed_task(module, info, task, probe_config("evar"), progress=False)
    assert set(emb.roles) == {"train", "test"}
    i = int(task.splits[0].test[0])
    frontend = LogMelSpectrogram()
    head = (frontend(load_audio(task.files[i])[:4000]) - emb.norm_mean) / emb.norm_std
    torch.testing.assert_close(emb.get("test", np.array([i]))[0], module(head)[0])
    assert set(embed_task(module, info, task, probe_config("byola"), progress=False).roles) == {"train"}


def test_cross_validation_task_carves_validation_per_fold(tmp_path):
    task = fold_task(tmp_path)
    result = linear_probe("logmel", task, runs=2, out_dir=None, progress=False)
    assert len(result.rows) == 2 * 3 and {r["fold"] for r in result.rows} == {"fold1", "fold2", "fold3"}
    # 10 % of 18 is 2, but the carve-out covers all 3 classes
    assert all(r["n_valid"] == 3 and r["n_train"] == 15 for r in result.rows)
    per_run = [np.mean([r["test_acc"] for r in result.rows if r["run"] == k]) for k in (0, 1)]
    assert result.mean == pytest.approx(np.mean(per_run)) and result.std == pytest.approx(np.std(per_run))


def test_missing_files_are_listed_and_can_be_skipped(tones, tmp_path):
    ghosts = tuple(str(tmp_path / f"ghost{k}.wav") for k in range(7))
    task = Task(tones.name, tones.classes, tones.unit_sec, tones.files[:-7] + ghosts, tones.labels, tones.splits)
    with pytest.raises(TaskError, match=r"7 of 24 listed files are missing, e.g.\n  .*ghost0.wav") as err:
        linear_probe("logmel", task, runs=1, out_dir=None, progress=False)
    assert "and 2 more" in str(err.value) and "--skip-missing" in str(err.value)
    with pytest.warns(UserWarning, match="skipping 7 missing"):
        result = linear_probe("logmel", task, runs=1, out_dir=None, skip_missing=True, progress=False)
    assert result.rows[0]["n_test"] + result.rows[0]["n_valid"] + result.rows[0]["n_train"] == 24 - 7


def test_class_absent_from_train_is_named(tones):
    labels = tones.labels.copy()
    labels[labels == 2] = 1
    labels[tones.splits[0].test[-1]] = 2  # "high" only in test
    task = Task(tones.name, tones.classes, tones.unit_sec, tones.files, labels, tones.splits)
    with pytest.raises(TaskError, match=r"\['high'\] occur in test but not in train of split 'official'"):
        linear_probe("logmel", task, runs=1, out_dir=None, progress=False)


def test_format_table_puts_ours_beside_the_paper():
    summary = [{"model": "m", "preset": "byola", "task": "spcv2", "mean": 0.9123, "std": 0.004},
               {"model": "m", "preset": "byola", "task": "fsdd_digits", "mean": 0.5, "std": 0.0}]
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0] == "| Model | NS | US8K | VC1 | VF | SPCV2/12 | SPCV2 | Avg |"
    assert lines[2].startswith("| BYOL-A (paper") and "| 92.2 |" in lines[2] and lines[2].endswith("77.8 |")
    assert lines[4] == "| m [byola] | – | – | – | – | – | 91.2 ± 0.4 | – |"
    # The stand-in task: a table of its own after the paper's, without paper rows or Avg.
    assert lines[-3:] == ["| Model | fsdd_digits |", "|---|---|", "| m [byola] | 50.0 ± 0.0 |"]


def test_quick_looks_are_marked_and_kept_apart_from_full_runs():
    rows = [{"probe_id": pid, "model": "m", "preset": "byola", "task": "spcv2", "variant": "", "fold": "official",
             "run": 0, "test_acc": acc, "quick_look": quick}
            for pid, acc, quick in (("1", 0.9, ""), ("2", 0.5, "4"))]
    latest = latest_summaries(rows)  # the later quick look does not replace the full run
    assert sorted((s["quick_look"], s["mean"]) for s in latest if s["quick_look"]) == [(4, 0.5)]
    table = format_table(latest)
    assert "| m [byola] | – | – | – | – | – | 90.0 ± 0.0 | – |" in table
    assert "| m [byola] (quick look: ≤4 per class) | – | – | – | – | – | 50.0 ± 0.0 | – |" in table


def test_parse_task_data_forms(tmp_path):
    assert parse_task_data("spcv2", "/d/spc") == {"spcv2": {"root": "/d/spc"}}
    assert parse_task_data("all", "us8k=/d/u,vc1=/d/v") == {"us8k": {"root": "/d/u"}, "vc1": {"root": "/d/v"}}
    yml = tmp_path / "data.yaml"
    yml.write_text("spcv2_12: {root: /d/spc, variant: b}\nnsynth: /d/ns\n")
    assert parse_task_data("all", str(yml)) == {"spcv2_12": {"root": "/d/spc", "variant": "b"},
                                                "nsynth": {"root": "/d/ns"}}
    assert list(parse_task_data("nsynth", str(yml))) == ["nsynth"]
    with pytest.raises(ProbeError, match="no data given for task"):
        parse_task_data("vc1", str(yml))
    with pytest.raises(ProbeError, match="needs --data as a YAML"):
        parse_task_data("all", "/d/spc")
    # Stand-ins: one shared data root serves several, and no --data means $AUDIORQ_SHARED_DATA.
    assert parse_task_data("fsdd_digits,esc10", "/shared") == {"fsdd_digits": {"root": "/shared"},
                                                             "esc10": {"root": "/shared"}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIORQ_SHARED_DATA", str(tmp_path))
        assert parse_task_data("esc10", None) == {"esc10": {"root": str(tmp_path)}}
        assert parse_task_data("esc10,fsdd_speakers", None)["fsdd_speakers"] == {"root": str(tmp_path)}
        with pytest.raises(ProbeError, match=r"--data is required for task\(s\) us8k"):
            parse_task_data("esc10,us8k", None)
        with pytest.raises(ProbeError, match="--task all needs --data"):
            parse_task_data("all", None)


# ---------------------------------------------------------------------------------------------- real audio


def fsdd_digits(limit_per_speaker_digit: int) -> Task:
    """FSDD digits by speaker: george, jackson, lucas, nicolas train; theo valid; yweweler test."""
    files, labels, roles = [], [], []
    role_of = {"george": 0, "jackson": 0, "lucas": 0, "nicolas": 0, "theo": 1, "yweweler": 2}
    for path in sorted(FSDD.glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        if int(index) < limit_per_speaker_digit:
            files.append(str(path))
            labels.append(int(digit))
            roles.append(role_of[speaker])
    roles = np.array(roles)
    split = Split("speakers", *(np.flatnonzero(roles == r) for r in range(3)))
    return Task("fsdd_digits", tuple(map(str, range(10))), 1.0, tuple(files), np.array(labels), (split,))


@pytest.mark.skipif(not FSDD.is_dir(), reason="shared FSDD data not present")
def test_fsdd_digit_probe_with_baselines(tmp_path):
    # Speaker-disjoint digits from few clips: hard for time-pooled features, but clearly above chance (0.1).
    for spec, per_speaker_digit, floor in (("logmel", 5, 0.18), ("random:d=64,seed=0", 3, 0.1)):
        task = fsdd_digits(per_speaker_digit)  # 4 train speakers, 1 valid, 1 test, 10 digits
        res = linear_probe(spec, task, runs=3, out_dir=tmp_path, progress=False)
        assert res.rows[0]["n_train"] == 40 * per_speaker_digit and res.rows[0]["n_test"] == 10 * per_speaker_digit
        assert res.mean > floor
    table = (tmp_path / "table.md").read_text()
    assert "logmel-mean+std+max [byola]" in table and "random-d64-seed0 [byola]" in table
    assert len(read_scores(tmp_path / "scores.csv")) == 6


def _has_fsdd_reader() -> bool:
    try:
        from audiorq.data.tasks import TASKS
    except ImportError:
        return False
    return "fsdd_digits" in TASKS


@pytest.mark.skipif(not FSDD.is_dir() or not _has_fsdd_reader(), reason="FSDD data or fsdd_digits reader absent")
def test_cli_probe_fsdd(tmp_path):
    from audiorq.cli import main

    result = CliRunner().invoke(main, [
        "probe", "logmel", "--task", "fsdd_digits", "--data", str(SHARED / "fsdd"), "--runs", "2",
        "--max-per-class", "4", "--device", "cpu", "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "| BYOL-A (paper" not in result.output and "| Model | fsdd_digits |" in result.output
    assert "logmel-mean+std+max [byola] (quick look: ≤4 per class)" in result.output
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["quick_look"] for r in rows} == {"4"}


@pytest.mark.skipif(not FSDD.is_dir() or not _has_fsdd_reader(), reason="FSDD data or fsdd_digits reader absent")
def test_cli_probe_stand_in_reads_the_shared_root_or_the_variable(tmp_path, monkeypatch):
    from audiorq.cli import main

    args = ["probe", "logmel", "--task", "fsdd_speakers", "--runs", "1", "--max-per-class", "2", "--device", "cpu",
            "--out", str(tmp_path), "--no-progress", "--name", "pooled"]
    root = CliRunner().invoke(main, [*args, "--data", str(SHARED)])  # the root that holds fsdd/
    assert root.exit_code == 0, root.output
    monkeypatch.setenv("AUDIORQ_SHARED_DATA", str(SHARED))
    env = CliRunner().invoke(main, args)  # no --data: the variable
    assert env.exit_code == 0, env.output
    assert {r["model"] for r in read_scores(tmp_path / "scores.csv")} == {"pooled"}  # --name
    wrong = CliRunner().invoke(main, [*args, "--data", str(tmp_path)])
    assert wrong.exit_code == 2 and "shared data root" in wrong.output, wrong.output


def test_probe_help_lists_every_task():
    from audiorq.cli import main
    from audiorq.data.tasks import TASKS

    text = " ".join(CliRunner().invoke(main, ["probe", "--help"]).output.split())
    assert all(name in text for name in TASKS)


def test_cli_reports_missing_data_cleanly(tmp_path):
    from audiorq.cli import main

    result = CliRunner().invoke(main, ["probe", "logmel", "--task", "all", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "needs --data as a YAML" in result.output


def test_a_run_folder_and_its_encoder_file_are_one_encoder(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    torch.save(AudioNTT2020(n_mels=64, d=16).state_dict(), run / "encoder.pth")
    (_, by_folder), (_, by_file) = load_encoder(str(run)), load_encoder(str(run / "encoder.pth"))
    assert by_folder.name == by_file.name == "myrun" and by_folder.weights_hash == by_file.weights_hash
    assert load_encoder(str(run), name="rq-small")[1].name == "rq-small"


def test_embedding_bars_say_which_splits_and_crop(tones):
    from audiorq.probe.embed import embed_label

    assert embed_label(tones, "byola", "train") == "tones embed train+valid+test (random crop)"
    assert embed_label(tones, "evar", "train") == "tones embed train+valid (random crop)"
    assert embed_label(tones, "evar", "test") == "tones embed test (head crop)"
