"""Task readers: tiny fake trees in each official layout, parsed splits/labels/counts, bad input; dev sets."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiorq.data.tasks import (
    TASKS,
    CountMismatchWarning,
    MissingFilesError,
    TaskError,
    find_missing_files,
    load_task,
    shared_data_root,
)
from audiorq.data.tasks.spcv2 import WORDS_12


def write_wav(path: Path, seconds: float = 0.05, sr: int = 16000, channels: int = 1, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (0.1 * rng.standard_normal((int(round(seconds * sr)), channels))).astype(np.float32)
    sf.write(str(path), data, sr, subtype="PCM_16")


def split_files(task, which: str, split_index: int = 0) -> set[str]:
    idx = getattr(task.splits[split_index], which)
    return {Path(task.files[i]).name for i in ([] if idx is None else idx.tolist())}


def assert_partition(task) -> None:
    for s in task.splits:
        parts = [s.train, s.test] + ([] if s.valid is None else [s.valid])
        joined = np.concatenate(parts)
        assert len(joined) == len(np.unique(joined)), f"{s.name}: overlapping indices"
        assert all(p.dtype == np.int64 for p in parts)
    assert task.labels.dtype == np.int64 and task.labels.shape == (len(task.files),)
    assert list(task.classes) == sorted(task.classes) or task.name in ("fsdd_digits",)
    assert all(Path(f).is_absolute() for f in task.files)


# ---------------------------------------------------------------- NSynth


def make_nsynth(root: Path, notes: dict[str, dict[str, str]], write_audio: bool = True) -> None:
    for split, mapping in notes.items():
        folder = root / f"nsynth-{split}"
        folder.mkdir(parents=True)
        examples = {nid: {"instrument_family_str": fam, "pitch": 60, "velocity": 100} for nid, fam in mapping.items()}
        (folder / "examples.json").write_text(json.dumps(examples))
        if write_audio:
            for nid in mapping:
                write_wav(folder / "audio" / f"{nid}.wav")


NSYNTH_NOTES = {
    "train": {"bass_a_000-022-100": "bass", "guitar_b_001-030-050": "guitar", "synth_lead_c-040-075": "synth_lead",
              "bass_d_002-050-100": "bass"},
    "valid": {"guitar_e_003-031-050": "guitar"},
    "test": {"bass_f_004-060-127": "bass", "guitar_g_005-061-127": "guitar"},
}


def test_nsynth_splits_labels_and_count_warning(tmp_path):
    make_nsynth(tmp_path, NSYNTH_NOTES)
    with pytest.warns(CountMismatchWarning, match=r"total: found 7, official 305979"):
        task = load_task("nsynth", tmp_path)
    assert task.classes == ("bass", "guitar", "synth_lead")
    assert task.unit_sec == 4.0 and len(task.splits) == 1 and task.splits[0].name == "official"
    assert split_files(task, "train") == {f"{n}.wav" for n in NSYNTH_NOTES["train"]}
    assert split_files(task, "valid") == {f"{n}.wav" for n in NSYNTH_NOTES["valid"]}
    assert split_files(task, "test") == {f"{n}.wav" for n in NSYNTH_NOTES["test"]}
    for f, y in zip(task.files, task.labels):
        split = Path(f).parent.parent.name.removeprefix("nsynth-")
        assert task.classes[y] == NSYNTH_NOTES[split][Path(f).stem]
    assert task.info["counts"]["train"] == 4 and task.info["counts"]["classes"] == 3
    assert any("train: found 4, official 289205" in m for m in task.info["count_mismatches"])
    assert_partition(task)


def test_nsynth_class_absent_from_train_is_an_error(tmp_path):
    notes = {k: dict(v) for k, v in NSYNTH_NOTES.items()}
    notes["test"]["flute_x_000-070-100"] = "flute"
    make_nsynth(tmp_path, notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)
        with pytest.raises(TaskError, match=r"\['flute'\] occur in test but not in train"):
            load_task("nsynth", tmp_path)


def test_missing_files_are_listed_or_skipped(tmp_path):
    make_nsynth(tmp_path, NSYNTH_NOTES)
    gone = tmp_path / "nsynth-train" / "audio" / "bass_d_002-050-100.wav"
    gone.unlink()
    with pytest.raises(MissingFilesError) as err:
        load_task("nsynth", tmp_path)
    assert err.value.missing == [str(gone)] and err.value.n_total == 7
    assert "1 of 7 listed files are missing" in str(err.value) and str(gone) in str(err.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = load_task("nsynth", tmp_path, skip_missing=True)
    assert str(gone) not in task.files and len(task.files) == 6
    assert task.info["missing"] == [str(gone)] and task.info["n_missing"] == 1
    # check_files=False trusts the metadata (no listing of folders).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(load_task("nsynth", tmp_path, check_files=False).files) == 7


def test_nsynth_missing_metadata_names_the_file(tmp_path):
    make_nsynth(tmp_path, {"train": NSYNTH_NOTES["train"], "test": NSYNTH_NOTES["test"]})
    with pytest.raises(TaskError, match=r"nsynth-valid/examples.json not found"):
        load_task("nsynth", tmp_path)


# ---------------------------------------------------------------- UrbanSound8K

US8K_CLASSES = ["air_conditioner", "car_horn", "dog_bark"]


def make_us8k(root: Path, per_fold: int = 3, n_folds: int = 10, classes=US8K_CLASSES) -> list[tuple[str, int, str]]:
    rows = []
    for fold in range(1, n_folds + 1):
        for j in range(per_fold):
            cls = classes[(fold + j) % len(classes)]
            name = f"{100 + fold}-{j}-0-{fold}.wav"
            write_wav(root / "audio" / f"fold{fold}" / name)
            rows.append((name, fold, cls))
    meta = root / "metadata" / "UrbanSound8K.csv"
    meta.parent.mkdir(parents=True)
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    lines += [f"{n},{i},0.0,1.0,1,{f},{classes.index(c)},{c}" for i, (n, f, c) in enumerate(rows)]
    meta.write_text("\n".join(lines) + "\n")
    return rows


def test_us8k_ten_folds_leave_one_out(tmp_path):
    rows = make_us8k(tmp_path / "UrbanSound8K")
    with pytest.warns(CountMismatchWarning, match=r"folds: found \[3, 3"):
        task = load_task("us8k", tmp_path)  # the parent of UrbanSound8K/ works too
    assert [s.name for s in task.splits] == [f"fold{k}" for k in range(1, 11)]
    assert task.classes == tuple(US8K_CLASSES) and task.unit_sec == 4.0
    fold_of = {n: f for n, f, _ in rows}
    for k, s in enumerate(task.splits, start=1):
        assert s.valid is None
        assert {fold_of[n] for n in split_files(task, "test", k - 1)} == {k}
        assert k not in {fold_of[n] for n in split_files(task, "train", k - 1)}
        assert len(s.train) + len(s.test) == len(task.files)
    for f, y in zip(task.files, task.labels):
        assert Path(f).parent.name == f"fold{fold_of[Path(f).name]}"
        assert task.classes[y] == dict((n, c) for n, _, c in rows)[Path(f).name]
    assert task.info["counts"]["folds"] == [3] * 10
    assert_partition(task)


def test_us8k_class_in_one_fold_only_is_an_error(tmp_path):
    make_us8k(tmp_path)
    meta = tmp_path / "metadata" / "UrbanSound8K.csv"
    write_wav(tmp_path / "audio" / "fold4" / "999-0-0-0.wav")
    meta.write_text(meta.read_text() + "999-0-0-0.wav,999,0,1,1,4,9,siren\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)
        with pytest.raises(TaskError, match=r"\['siren'\] occur in test but not in train of split 'fold4'"):
            load_task("us8k", tmp_path)


# ---------------------------------------------------------------- VoxCeleb1


def test_vc1_iden_split(tmp_path):
    lines = []
    for spk in ("id10001", "id10002"):
        for setid, clip in (("1", "00001"), ("1", "00002"), ("2", "00003"), ("3", "00004")):
            rel = f"{spk}/yt{spk[-1]}/{clip}.wav"
            write_wav(tmp_path / "wav" / rel)
            lines.append(f"{setid} {rel}")
    (tmp_path / "iden_split.txt").write_text("\n".join(lines) + "\n")
    with pytest.warns(CountMismatchWarning, match=r"classes: found 2, official 1251"):
        task = load_task("vc1", tmp_path)
    assert task.classes == ("id10001", "id10002") and task.unit_sec == pytest.approx(8.2)
    s = task.splits[0]
    assert (len(s.train), len(s.valid), len(s.test)) == (4, 2, 2)
    assert {task.classes[y] for y in task.labels[s.test]} == {"id10001", "id10002"}
    for f, y in zip(task.files, task.labels):
        assert Path(f).relative_to(tmp_path / "wav").parts[0] == task.classes[y]
    assert_partition(task)


def test_vc1_bad_split_file(tmp_path):
    with pytest.raises(TaskError, match=r"iden_split.txt"):
        load_task("vc1", tmp_path)
    (tmp_path / "iden_split.txt").write_text("1 id1/yt/1.wav\n4 id1/yt/2.wav\n")
    with pytest.raises(TaskError, match=r"line 2"):
        load_task("vc1", tmp_path)


# ---------------------------------------------------------------- VoxForge


def test_voxforge_evar_metadata_csv(tmp_path):
    rows = []
    langs = ["de", "en", "es", "fr", "it", "ru"]
    for i, lang in enumerate(langs):
        for j, split in enumerate(("train", "train", "valid", "test")):
            rel = f"{lang}user{i}-2010{j}/wav/a{j:04d}.wav"
            write_wav(tmp_path / rel)
            rows.append(f"{len(rows)},{rel},{lang},{split}")
    # EVAR's csv has a leading unnamed index column (pandas); it is ignored.
    (tmp_path / "voxforge.csv").write_text(",file_name,label,split\n" + "\n".join(rows) + "\n")
    with pytest.warns(CountMismatchWarning, match=r"total: found 24, official 176428"):
        task = load_task("voxforge", tmp_path)
    assert task.classes == tuple(langs) and task.unit_sec == pytest.approx(5.8)
    s = task.splits[0]
    assert (len(s.train), len(s.valid), len(s.test)) == (12, 6, 6)
    assert not task.info["count_mismatches"] or all("classes" not in m for m in task.info["count_mismatches"])


def test_voxforge_without_metadata_says_where_to_get_it(tmp_path):
    with pytest.raises(TaskError, match=r"evar/metadata/voxforge.csv"):
        load_task("voxforge", tmp_path)


# ---------------------------------------------------------------- Speech Commands V2

SPC_WORDS = ("yes", "no", "bed", "cat")  # two of the 12-class words, two that become _unknown_
NOISE_SECONDS = {"doing_the_dishes": 2.0, "dude_miaowing": 1.6, "exercise_bike": 1.5, "pink_noise": 2.0,
                 "running_tap": 1.7, "white_noise": 2.0}


def n_windows(seconds: float, sr: int = 16000) -> int:
    return len(range(0, int(round(seconds * sr)) - sr, sr // 2))


def make_spcv2(root: Path) -> dict[str, str]:
    split_of = {}
    valid, test = [], []
    for w in SPC_WORDS:
        for k in range(4):
            rel = f"{w}/{k:08x}_nohash_0.wav"
            write_wav(root / rel)
            split = "valid" if k == 1 else "test" if k == 2 else "train"
            (valid if split == "valid" else test if split == "test" else []).append(rel)
            split_of[rel] = split
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    for name, seconds in NOISE_SECONDS.items():
        write_wav(root / "_background_noise_" / f"{name}.wav", seconds=seconds)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    return split_of


def test_spcv2_lists_define_the_split(tmp_path):
    split_of = make_spcv2(tmp_path)
    with pytest.warns(CountMismatchWarning, match=r"classes: found 4, official 35"):
        task = load_task("spcv2", tmp_path)
    assert task.classes == tuple(sorted(SPC_WORDS)) and task.spans is None
    assert len(task.files) == 16  # _background_noise_ is not a class
    s = task.splits[0]
    for name in ("train", "valid", "test"):
        idx = getattr(s, name)
        got = {str(Path(task.files[i]).relative_to(tmp_path)) for i in idx}
        assert got == {r for r, sp in split_of.items() if sp == name}
    for f, y in zip(task.files, task.labels):
        assert Path(f).parent.name == task.classes[y]
    assert_partition(task)


def test_spcv2_12_variant_a(tmp_path):
    make_spcv2(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)
        task = load_task("spcv2_12", tmp_path)
    assert task.variant == "byola-relabel" and task.unit_sec == 1.0
    assert set(task.classes) == {"_silence_", "_unknown_", "yes", "no"}
    names = [task.classes[y] for y in task.labels]
    for f, name in zip(task.files, names):
        word = Path(f).parent.name
        if word == "_background_noise_":
            assert name == "_silence_"
        else:
            assert name == (word if word in WORDS_12 else "_unknown_")
    s = task.splits[0]
    noise_split = {}
    for split in ("train", "valid", "test"):
        for i in getattr(s, split):
            if names[i] == "_silence_":
                noise_split.setdefault(Path(task.files[i]).stem, set()).add(split)
    assert noise_split == {"doing_the_dishes": {"train"}, "dude_miaowing": {"train"}, "exercise_bike": {"train"},
                           "white_noise": {"train"}, "running_tap": {"valid"}, "pink_noise": {"test"}}
    expected_windows = {"train": sum(n_windows(NOISE_SECONDS[n]) for n in
                                     ("doing_the_dishes", "dude_miaowing", "exercise_bike", "white_noise")),
                        "valid": n_windows(1.7), "test": n_windows(2.0)}
    assert task.info["silence_windows"] == expected_windows
    assert (len(s.train), len(s.valid), len(s.test)) == (8 + expected_windows["train"], 4 + expected_windows["valid"],
                                                          4 + expected_windows["test"])
    assert task.info["counts"]["classes_per_split"] == {"train": 4, "valid": 4, "test": 4}
    # Silence items are 1 s windows starting every 0.5 s; word clips are whole files.
    for i, name in enumerate(names):
        start, duration = task.span(i)
        if name == "_silence_":
            assert duration == 1.0 and start % 0.5 == 0
            assert start + duration <= NOISE_SECONDS[Path(task.files[i]).stem]
        else:
            assert (start, duration) == (0.0, None)
    assert_partition(task)


def test_spcv2_12_variant_b(tmp_path):
    make_spcv2(tmp_path)
    test_dir = tmp_path / "speech_commands_test_set_v0.02"
    for label in ("yes", "no", "_silence_", "_unknown_"):
        for k in range(2):
            write_wav(test_dir / label / f"{label}_{k}.wav")
    with pytest.warns(CountMismatchWarning, match=r"test: found 8, official 4890"):
        task = load_task("spcv2_12", tmp_path, variant="b")
    assert task.variant == "tfds"
    s = task.splits[0]
    test_files = {task.files[i] for i in s.test}
    assert test_files == {str(p) for p in test_dir.glob("*/*.wav")}
    for i in s.test:
        assert task.classes[task.labels[i]] == Path(task.files[i]).parent.name
    # The official testing_list words are in no split; running_tap windows are the valid silence.
    listed = set((tmp_path / "testing_list.txt").read_text().split())
    assert not any(str(Path(task.files[i]).relative_to(tmp_path)) in listed for i in np.concatenate([s.train, s.valid]))
    valid_noise = {Path(task.files[i]).stem for i in s.valid if task.classes[task.labels[i]] == "_silence_"}
    assert valid_noise == {"running_tap"}
    assert task.info["silence_windows"]["train"] == sum(n_windows(v) for k, v in NOISE_SECONDS.items() if k != "running_tap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)
        assert len(load_task("spcv2", tmp_path).files) == 16  # the test set folder is not a word


def test_spcv2_12_bad_variant_and_missing_test_set(tmp_path):
    make_spcv2(tmp_path)
    with pytest.raises(ValueError, match=r"variant must be 'a'"):
        load_task("spcv2_12", tmp_path, variant="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountMismatchWarning)
        with pytest.raises(TaskError, match=r"speech_commands_test_set_v0.02"):
            load_task("spcv2_12", tmp_path, variant="b")


# ---------------------------------------------------------------- csv


def test_csv_split_relative_paths_and_default_unit_sec(tmp_path):
    data = tmp_path / "mydata"
    durations = {"a.wav": 1.0, "b.wav": 1.26, "c.wav": 3.0, "d.wav": 0.5}
    for name, sec in durations.items():
        write_wav(data / "clips" / name, seconds=sec, sr=8000)
    (data / "list.csv").write_text(
        "path,label,split\nclips/a.wav,dog,train\nclips/b.wav,cat,train\nclips/c.wav,dog,val\nclips/d.wav,cat,test\n"
    )
    task = load_task("csv", data / "list.csv")
    assert task.name == "list" and task.classes == ("cat", "dog")
    assert task.files[0] == str(data / "clips" / "a.wav")
    s = task.splits[0]
    assert s.train.tolist() == [0, 1] and s.valid.tolist() == [2] and s.test.tolist() == [3]
    assert task.unit_sec == pytest.approx(round((1.0 + 1.26) / 2, 1))  # train files only
    assert "median duration" in task.info["unit_sec_source"]
    assert load_task("csv", data / "list.csv", unit_sec=2.5).unit_sec == 2.5


def test_csv_folds_are_leave_one_fold_out_and_spans(tmp_path):
    rows = ["path,label,fold,start,duration"]
    for fold in (1, 2, 3):
        for label in ("x", "y"):
            write_wav(tmp_path / f"{label}{fold}.wav", seconds=2.0)
            rows.append(f"{label}{fold}.wav,{label},{fold},0.5,1.0")
    (tmp_path / "folds.csv").write_text("\n".join(rows) + "\n")
    task = load_task("csv", tmp_path / "folds.csv")
    assert [s.name for s in task.splits] == ["fold1", "fold2", "fold3"]
    assert all(s.valid is None and len(s.test) == 2 and len(s.train) == 4 for s in task.splits)
    assert task.span(0) == (0.5, 1.0) and task.unit_sec == 1.0  # mean window length
    assert_partition(task)


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,label,split\na.wav,x,train\n", r"needs columns path \(or file_name\) and label"),
        ("path,label\na.wav,x\n", r"needs a split or a fold column"),
        ("path,label,split\na.wav,x,training\n", r"line 2: unknown split 'training'"),
        ("path,label,split\na.wav,x,train\nb.wav,y,\n", r"line 3: empty split"),
        ("path,label,split\na.wav,x,train\nb.wav,x,valid\n", r"the test set of split 'official' is empty"),
        ("path,label,split\na.wav,x,train\nb.wav,y,test\n", r"\['y'\] occur in test but not in train"),
        ("path,label,split,start\na.wav,x,train,-1\nb.wav,x,test,0\n", r"line 2: start: '-1' must be"),
    ],
)
def test_csv_bad_input_names_the_problem(tmp_path, text, message):
    for name in ("a.wav", "b.wav"):
        write_wav(tmp_path / name)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(TaskError, match=message):
        load_task("csv", tmp_path / "bad.csv", unit_sec=1.0)


# ---------------------------------------------------------------- registry, helpers


def test_registry_and_unknown_names(tmp_path):
    assert {"nsynth", "us8k", "vc1", "voxforge", "spcv2", "spcv2_12", "csv",
            "fsdd_digits", "fsdd_speakers", "esc10"} <= set(TASKS)
    with pytest.raises(ValueError, match=r"unknown task 'nope'"):
        load_task("nope", tmp_path)
    make_nsynth(tmp_path, NSYNTH_NOTES, write_audio=False)
    with pytest.raises(TypeError, match=r"variant"):
        load_task("nsynth", tmp_path, variant="a")


def test_find_missing_files(tmp_path):
    write_wav(tmp_path / "a" / "x.wav")
    paths = [str(tmp_path / "a" / "x.wav"), str(tmp_path / "a" / "y.wav"), str(tmp_path / "b" / "z.wav"),
             str(tmp_path / "a")]
    assert find_missing_files(paths) == paths[1:]


# ---------------------------------------------------------------- dev sets on the real shared data

FSDD = shared_data_root() / "fsdd"
ESC10 = shared_data_root() / "esc10"
needs_fsdd = pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason="shared FSDD data not present")
needs_esc10 = pytest.mark.skipif(not ESC10.is_dir(), reason="shared ESC-10 data not present")


def speaker(path: str) -> str:
    return Path(path).stem.split("_")[1]


@needs_fsdd
def test_fsdd_digits_is_speaker_disjoint():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CountMismatchWarning)
        task = load_task("fsdd_digits", FSDD)
    assert len(task.files) == 3000 and task.classes == tuple(str(d) for d in range(10)) and task.unit_sec == 1.0
    s = task.splits[0]
    speakers = {name: {speaker(task.files[i]) for i in getattr(s, name)} for name in ("train", "valid", "test")}
    assert speakers == {"train": {"george", "jackson", "lucas", "nicolas"}, "valid": {"theo"}, "test": {"yweweler"}}
    for f, y in zip(task.files, task.labels):
        assert Path(f).name.split("_")[0] == task.classes[y]
    assert_partition(task)


@needs_fsdd
def test_fsdd_speakers_split_by_index():
    task = load_task("fsdd_speakers", FSDD / "recordings")
    assert len(task.files) == 3000 and len(task.classes) == 6
    s = task.splits[0]
    for name, lo, hi in (("train", 0, 34), ("valid", 35, 41), ("test", 42, 49)):
        idx = getattr(s, name)
        indices = {int(Path(task.files[i]).stem.split("_")[2]) for i in idx}
        assert min(indices) == lo and max(indices) == hi
        assert set(task.labels[idx].tolist()) == set(range(6))  # every speaker in every split
    assert (len(s.train), len(s.valid), len(s.test)) == (2100, 420, 480)


@needs_esc10
def test_esc10_five_folds_from_file_names():
    task = load_task("esc10", ESC10)
    assert len(task.files) == 400 and len(task.classes) == 10 and task.unit_sec == 5.0
    assert "Dog bark" in task.classes
    assert [s.name for s in task.splits] == [f"fold{k}" for k in range(1, 6)]
    for k, s in enumerate(task.splits, start=1):
        assert len(s.test) == 80 and len(s.train) == 320 and s.valid is None
        assert {Path(task.files[i]).name.split("-")[0] for i in s.test} == {str(k)}
    assert math.isclose(task.labels.mean(), 4.5)  # 40 clips per class


@needs_fsdd
@needs_esc10
def test_stand_ins_read_the_shared_root_too():
    root = shared_data_root()
    for name, folder in (("fsdd_digits", FSDD), ("fsdd_speakers", FSDD), ("esc10", ESC10)):
        assert load_task(name, root).files == load_task(name, folder).files


def test_stand_in_errors_hint_at_the_folder(tmp_path):
    for name in ("fsdd_digits", "esc10"):
        with pytest.raises(TaskError, match=r"the shared data root that holds it .*AUDIORQ_SHARED_DATA"):
            load_task(name, tmp_path)
