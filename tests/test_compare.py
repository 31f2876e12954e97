"""The comparison engine (demo, eval/mini_benchmark.py): pretrain variants, probe, resume, table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audiorq.compare import STAGES, Comparison, Variant, compare, comparison_table, corpus_file_list, loss_curves
from audiorq.data.tasks.csvfile import load_csv
from audiorq.demo import folder_metadata, synth_corpus
from audiorq.synth import CORPUS_CLASSES, corpus_clip

TINY = [  # CPU-sized pretraining: d 32, batch 4, two steps, norm stats given (no stats pass)
    "batch_size=4", "model.d=32", "model.hidden_dim=64", "model.proj_dim=16", "data.num_workers=0",
    "data.norm_stats=[-8.0, 4.0]", "log.tensorboard=false", "max_steps=2", "epochs=5",
]
PROBE = ["max_epochs=3", "embed_batch_size=16"]
VARIANTS = [
    Variant("rq", "RRC → RQ", ("augment.chain=[rrc,rq]",)),
    Variant("rrc_only", "RRC only", ("augment.chain=[rrc]",)),
    Variant("random", "random init", baseline="random:d={d},seed={seed}"),
]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return load_csv(synth_corpus(out, clips_per_class=10, seconds=0.5, progress=False), unit_sec=0.5)


def test_corpus_clip_is_deterministic_and_classes_differ():
    for label in CORPUS_CLASSES:
        x = corpus_clip(label, seconds=0.5, seed=3)
        assert x.shape == (8000,) and x.dtype == np.float32 and 0.1 < np.abs(x).max() <= 1.0
        np.testing.assert_array_equal(x, corpus_clip(label, seconds=0.5, seed=3))
    # The voices differ in pitch: the strongest partial (1 s clip: FFT bin = Hz) is the class's fundamental.
    for label, (f_lo, f_hi) in (("low_voice", (85, 165)), ("high_voice", (255, 425))):
        for seed in range(4):
            peak = np.argmax(np.abs(np.fft.rfft(corpus_clip(label, seconds=1.0, seed=seed))))
            assert f_lo <= peak <= f_hi, (label, seed, peak)


def test_synth_corpus_metadata_is_a_balanced_split_task(tiny_task):
    n = len(CORPUS_CLASSES)
    assert tiny_task.n_classes == n and len(tiny_task.files) == 10 * n
    split = tiny_task.splits[0]
    # 70 / 10 / 20 % of every class's clips in train / valid / test.
    assert (len(split.train), len(split.valid), len(split.test)) == (7 * n, n, 2 * n)
    for part in (split.train, split.valid, split.test):
        assert set(tiny_task.labels[part]) == set(range(n))


def test_folder_metadata_labels_by_subfolder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "data" / label / f"{i}.wav").write_bytes(b"")
    (tmp_path / "data" / "notes").mkdir()
    (tmp_path / "data" / "notes" / "readme.txt").write_text("not audio")
    rows = (folder_metadata(tmp_path / "data", tmp_path / "m.csv")).read_text().splitlines()
    assert rows[0] == "path,label,split" and len(rows) == 21
    splits = [r.split(",")[2] for r in rows[1:11]]
    assert splits.count("train") == 7 and splits.count("valid") == 1 and splits.count("test") == 2
    with pytest.raises(ValueError, match="no class subfolders"):
        folder_metadata(tmp_path / "data" / "notes", tmp_path / "n.csv")


def test_corpus_file_list_holds_each_file_once(tiny_task, tmp_path):
    path = corpus_file_list([tiny_task, tiny_task], tmp_path / "files.txt")
    assert path.read_text().splitlines() == sorted(tiny_task.files)


def test_compare_pretrains_probes_and_resumes_without_redoing_work(tiny_task, tmp_path):
    torch.manual_seed(0)
    kwargs = dict(overrides=TINY, runs=2, probe_overrides=PROBE, progress=False, recipe=None)
    first = compare(VARIANTS, [tiny_task], tmp_path / "cmp", **kwargs)
    stages = (tmp_path / "cmp" / STAGES).read_text().splitlines()
    # Two trained variants, three encoders x one task probed.
    assert [json.loads(s)["stage"] for s in stages].count("pretrain") == 2 and len(stages) == 5
    for name in ("rq", "rrc_only", "random"):
        scores = first.scores[name][tiny_task.name]
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert (first.run_dirs["rq"][0] / "encoder.pth").exists()
    assert first.final_loss["rq"] == first.final_loss["rq"]  # a number, not NaN
    encoder_time = (first.run_dirs["rq"][0] / "encoder.pth").stat().st_mtime_ns
    figure = loss_curves(first.run_dirs, tmp_path / "loss.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".loss.png*"))

    again = compare(VARIANTS, [tiny_task], tmp_path / "cmp", **kwargs)
    assert (tmp_path / "cmp" / STAGES).read_text().splitlines() == stages  # nothing redone
    assert (first.run_dirs["rq"][0] / "encoder.pth").stat().st_mtime_ns == encoder_time
    assert again.scores == first.scores

    # A changed pretraining setting is a different stage: it refuses to reuse the old run folder.
    with pytest.raises(Exception, match="cannot resume"):
        compare(VARIANTS[:1], [tiny_task], tmp_path / "cmp", **{**kwargs, "overrides": TINY + ["optim.lr=1e-2"]})


def test_comparison_table_reports_mean_std_and_missing_cells():
    result = Comparison(scores={"a": {"t1": [0.5, 0.7], "t2": [1.0]}, "b": {"t1": [0.25]}})
    text = comparison_table(result, [Variant("a", "A"), Variant("b", "B")], ["t1", "t2"], {"t1": "Task 1"})
    lines = text.splitlines()
    assert lines[0] == "| Encoder | Task 1 | t2 | Avg |"
    assert lines[2] == "| A | 60.0 ± 10.0 | 100.0 ± 0.0 | 80.0 |"
    assert lines[3] == "| B | 25.0 ± 0.0 | – | – |"
