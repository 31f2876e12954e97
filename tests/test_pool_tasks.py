"""Tasks derived from the pool corpus: labels from names, group-disjoint folds, duplicates left out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from audiorq.data.tasks import TaskError, load_task
from audiorq.data.tasks.pool import VOICES_FOLDER, drum_piece, voice_line
from conftest import shared_data_dir


def test_drum_pieces_and_voice_lines_from_names():
    named = {"EE_Kick_Hard_1": "kick", "bassdrum-4mics-br-stereo-soft2": "kick", "bd_03": "kick",
             "HardHse_K_02": "kick", "jsnare_04": "snare", "sd_05": "snare", "hihat-closed-4": "hihat",
             "HiHatClosed-2": "hihat", "hh_p": "hihat", "VP_Hat_1_Op": "hihat", "floortom_02": "tom", "t1_03": "tom",
             "VP_Tom_Hi": "tom", "crash16i__ride2": "cymbal", "CrashRide18Bell-1": "cymbal", "China-0": "cymbal",
             "EE_Clap": None, "beats_01-10": None, "AgogoHigh-0": None}
    for stem, piece in named.items():
        assert drum_piece(stem) == piece, stem
    assert drum_piece("kick_snare") is None  # two pieces: ambiguous, left out
    assert voice_line("Jump2") == voice_line("Jump1") == "jump" and voice_line("Uh-oh") == "uh-oh"


def _fake_pool(root, duplicate: bool = True):
    """Five kits x five pieces x two takes, three voice packs x five lines x two takes (1 kHz sine clips)."""
    rng = np.random.default_rng(0)

    def clip(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)

    for k in range(5):
        for piece in ("Kick", "Snare", "HiHat", "Tom", "Crash"):
            for take in range(2):
                clip(root / "drums" / f"kit{k}" / f"{piece}_{take}.flac")
    for pack in ("Alpha", "Beta", "Gamma"):
        for line in ("Hello", "Jump", "Ouch", "Oops", "Yes"):
            for take in (1, 2):
                clip(root / VOICES_FOLDER / pack / f"{line}{take}.flac")
    if duplicate:  # one clip shipped by two packs: ambiguous label, so both copies go
        (root / VOICES_FOLDER / "Beta" / "Hello1.flac").write_bytes((root / VOICES_FOLDER / "Alpha" / "Hello1.flac").read_bytes())
    return root


def _check_disjoint(task, group_of):
    for split in task.splits:
        train = {group_of(task.files[i]) for i in split.train}
        test = {group_of(task.files[i]) for i in split.test}
        assert not train & test, split.name
        # Every class in every fold's train and test set, so each fold scores every class.
        assert set(task.labels[split.test].tolist()) == set(task.labels[split.train].tolist()) == set(
            range(task.n_classes)), split.name


def _same_task(a, b) -> bool:
    return (a.files == b.files and a.classes == b.classes and np.array_equal(a.labels, b.labels)
            and all(x.name == y.name and np.array_equal(x.test, y.test) for x, y in zip(a.splits, b.splits)))


def test_synthetic_pool_tasks_are_group_disjoint(tmp_path):
    root = _fake_pool(tmp_path / "pool")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counts differ from the real pool's
        drums = load_task("pool_drums", tmp_path)  # the root holding pool/ works too
        voices = load_task("pool_voices", root)
        again = load_task("pool_drums", root), load_task("pool_voices", root)
    assert _same_task(again[0], drums) and _same_task(again[1], voices)  # deterministic, root or its parent
    assert drums.classes == ("cymbal", "hihat", "kick", "snare", "tom") and len(drums.files) == 50
    assert len(drums.splits) == 5 and sorted(len(s.test) for s in drums.splits) == [10] * 5
    _check_disjoint(drums, lambda f: f.split("/")[-2])
    assert voices.classes == ("Alpha", "Beta", "Gamma") and len(voices.files) == 28  # 30 minus the duplicate pair
    _check_disjoint(voices, lambda f: voice_line(f.split("/")[-1].removesuffix(".flac")))


def test_a_folder_without_the_pool_is_named(tmp_path):
    (tmp_path / "drums").mkdir()  # half a pool (no voices) is not a pool either
    for name in ("pool_drums", "pool_voices"):
        for root in (tmp_path, tmp_path / "nowhere"):
            with pytest.raises(TaskError, match=rf"{name}: .* holds no pool corpus .*AUDIORQ_SHARED_DATA") as e:
                load_task(name, root)
            assert "\n" not in str(e.value)  # a one-line hint


@pytest.fixture(scope="module")
def real_pool():
    root = shared_data_dir() / "pool"
    if not (root / "drums").is_dir():
        pytest.skip(f"the pool corpus is not at {root} (set AUDIORQ_SHARED_DATA)")
    return root


def test_real_pool_tasks_have_enough_test_clips_in_disjoint_groups(real_pool):
    drums, voices = load_task("pool_drums", real_pool), load_task("pool_voices", real_pool)
    assert len(drums.files) == 328 and drums.n_classes == 5
    assert len(voices.files) == 753 and voices.n_classes == 15
    for task in (drums, voices):
        assert sum(len(s.test) for s in task.splits) >= 100
    _check_disjoint(drums, lambda f: f.split("/")[-2])
    _check_disjoint(voices, lambda f: voice_line(f.split("/")[-1].removesuffix(".flac")))
    assert drums.info["counts"]["folds"] == [95, 90, 47, 48, 48] and not drums.info["count_mismatches"]
    assert voices.info["counts"]["folds"] == [130, 161, 138, 171, 153] and not voices.info["count_mismatches"]
    assert len({f.split("/")[-2] for f in drums.files}) == 10  # kits with at least one named piece
    assert _same_task(load_task("pool_drums", real_pool.parent), drums)  # the shared data root works too
