"""Sharing trained encoders: the .safetensors model file and card, load_model on raw audio, HEAR API, embed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import audiorq
import audiorq.hear as hear
from audiorq.cli import main
from audiorq.config import SAMPLE_RATE
from audiorq.data.tasks import load_csv
from audiorq.export import export_model
from audiorq.model import AudioModel, ModelError, load_model
from audiorq.probe.embed import ClipDataset, embed_clips
from audiorq.probe.encoders import load_encoder
from audiorq.runs import ENCODER_FILE, RunFileError, read_model_file
from test_runs import FIXTURE


def tones(n: int, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(n, S) harmonic tones at different pitches with a little noise, 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 150.0 + 90.0 * torch.arange(n).unsqueeze(1)
    wave = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 4))
    return (0.2 * wave + 0.01 * torch.randn(n, t.numel(), generator=g)).float()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    path, card = export_model(FIXTURE, out, license="MIT")
    return path, card


def test_export_writes_a_self_describing_file_and_card(exported):
    path, card = exported
    model = read_model_file(path)
    assert model.model == {"architecture": "AudioNTT2020", "d": 32, "n_mels": 8}
    assert model.frontend["n_mels"] == 8 and model.frontend["sample_rate"] == SAMPLE_RATE
    expected = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    assert model.norm_stats == pytest.approx(expected["norm_stats"])
    assert model.training["steps"] == 2 and model.training["augment_chain"] == ["rrc", "rq"]
    assert model.training["final_loss"] == pytest.approx(3.834904193878174)
    assert model.audiorq_version == audiorq.__version__
    for name, tensor in expected["encoder"].items():
        assert torch.equal(model.state[name], tensor), name
    text = card.read_text()
    for needle in ("# tiny", "AudioNTT2020", "audiorq.load_model(\"tiny.safetensors\")", "optimizer steps: 2",
                   "rrc", "## License", "MIT", "No probe scores recorded"):
        assert needle in text, needle


def test_export_refuses_to_overwrite(exported, tmp_path):
    path, card = exported
    before = path.read_bytes()
    with pytest.raises(ModelError, match="already exist"):
        export_model(FIXTURE, path)
    assert path.read_bytes() == before
    result = CliRunner().invoke(main, ["export", str(FIXTURE), str(path)])
    assert result.exit_code == 2 and "already exist" in result.output
    with pytest.raises(ModelError, match="must end in"):
        export_model(FIXTURE, tmp_path / "model.bin")


def test_every_encoder_format_gives_the_same_model(exported):
    x = tones(3)
    reference = load_model(exported[0])(x)
    assert reference.shape == (3, 32) and torch.isfinite(reference).all()
    for source in (FIXTURE, FIXTURE / "checkpoint.pt", FIXTURE / ENCODER_FILE):  # encoder.pth: config.yaml beside it
        assert torch.equal(load_model(source)(x), reference), source
    encoder, info = load_encoder(str(exported[0]))  # the probe reads model files too
    _, from_run = load_encoder(str(FIXTURE))
    assert info.kind == "model_file" and info.weights_hash == from_run.weights_hash and info.n_mels == 8


def test_bare_state_dict_needs_norm_stats(tmp_path):
    state = torch.load(FIXTURE / ENCODER_FILE, weights_only=True)
    torch.save(state, tmp_path / "byola_like.pth")
    with pytest.raises(ModelError, match="norm_stats"):
        load_model(tmp_path / "byola_like.pth")
    model = load_model(tmp_path / "byola_like.pth", norm_stats=(-5.0, 2.0), frontend_overrides=["n_mels=8"])
    assert (model.norm_mean, model.norm_std) == (-5.0, 2.0)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "byola_like.pth"), str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2 and "--norm-stats" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "byola_like.pth"), str(tmp_path / "m.safetensors"),
                                       "--norm-stats", "-5,2", "--frontend", "n_mels=8"])
    assert result.exit_code == 0, result.output
    assert "Not recorded" in (tmp_path / "m.md").read_text()


def test_foreign_or_broken_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(RunFileError, match="not an audiorq model file"):
        read_model_file(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_model_matches_the_probe_embedding_path(exported, tmp_path):
    waves = tones(4, seconds=1.0, seed=3)
    rows = ["path,label,split"]
    for i, w in enumerate(waves):
        sf.write(tmp_path / f"c{i}.wav", w.numpy(), SAMPLE_RATE, subtype="FLOAT")
        rows.append(f"c{i}.wav,{'ab'[i % 2]},{'train' if i < 2 else 'test'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    task = load_csv(tmp_path / "m.csv", unit_sec=1.0)
    model = load_model(exported[0])
    dataset = ClipDataset(task, np.arange(4), "byola", "train", seed=0)
    probe_path = embed_clips(model.encoder, model.frontend, dataset, model.norm_mean, model.norm_std, progress=False)
    assert torch.allclose(model(waves), probe_path, rtol=1e-5, atol=1e-6)


def test_short_clips_frames_and_batch_independence(exported):
    model = load_model(exported[0])
    assert isinstance(model, AudioModel) and model.sample_rate == SAMPLE_RATE and model.embedding_size == 32
    for n in (1, 100, model.min_samples - 1):
        emb = model(torch.full((2, n), 0.1))
        assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    x = tones(5, seconds=0.7)
    frames, times = model.frames(x)
    assert frames.shape[:2] == (5, times.numel()) and frames.shape[2] == 32
    assert torch.all(times[1:] > times[0:-1]) and times[0] == pytest.approx(3.5 * 10.0)  # ms: 3.5 hops of 10 ms
    alone = model(x[2:3])
    assert torch.allclose(model(x)[2:3], alone, rtol=1e-5, atol=1e-6)
    model.train()
    assert not model.training and not model.encoder.training  # always eval: no dropout, BN running stats


def test_hear_api_contract(exported):
    model = hear.load_model(str(exported[0]), device="cpu")
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 32
    audio = tones(3, seconds=1.2)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, 32) and scene.dtype == torch.float32
    assert torch.equal(scene, hear.get_scene_embeddings(audio, model))  # deterministic
    assert torch.allclose(hear.get_scene_embeddings(audio[1:2], model), scene[1:2], rtol=1e-5, atol=1e-6)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[0] == 3 and emb.shape[2] == 32 and ts.shape == emb.shape[:2]
    assert emb.dtype == torch.float32 and torch.all(torch.diff(ts, dim=1) > 0)
    assert float(ts[0, -1]) <= 1200.0  # inside the clip
    short_emb, short_ts = hear.get_timestamp_embeddings(torch.zeros(2, 50), model)
    assert short_emb.shape[:2] == short_ts.shape and short_emb.shape[1] >= 1
    with pytest.raises(ValueError, match="n_sounds"):
        hear.get_scene_embeddings(audio[0], model)


def test_embed_cli_skips_bad_files_and_stores_frames(exported, tmp_path):
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    for i, w in enumerate(tones(3, seconds=0.5)):
        sf.write(clips / f"a{i}.wav", w.numpy(), SAMPLE_RATE)
    sf.write(clips / "sub" / "long.wav", tones(1, seconds=1.5)[0].numpy(), SAMPLE_RATE)
    (clips / "broken.wav").write_bytes(b"RIFF not really")
    out = tmp_path / "emb.npz"
    result = CliRunner().invoke(main, ["embed", str(exported[0]), str(clips), "--out", str(out), "--frames",
                                       "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "embedded 4 files" in result.output and "skipped 1" in result.output and "broken.wav" in result.output
    data = np.load(out)
    files = [str(f) for f in data["files"]]
    assert len(files) == 4 and not any("broken" in f for f in files)
    assert data["embeddings"].shape == (4, 32) and data["frame_offsets"][-1] == len(data["frame_embeddings"])
    model = load_model(exported[0])
    k = files.index(str(clips / "sub" / "long.wav"))
    wave = torch.from_numpy(sf.read(clips / "sub" / "long.wav", dtype="float32")[0])
    assert np.allclose(data["embeddings"][k], model(wave).numpy()[0], rtol=1e-5, atol=1e-6)
    again = CliRunner().invoke(main, ["embed", str(exported[0]), str(clips), "--out", str(out), "--no-progress"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_top_level_api():
    from audiorq import AudioNTT2020, LogMelSpectrogram, RandomizedQuantization, listen, load_model, pretrain, probe

    assert callable(load_model) and callable(pretrain) and callable(probe) and callable(listen)
    assert LogMelSpectrogram()(torch.zeros(1, 1600)).shape == (1, 1, 64, 11)
    assert RandomizedQuantization(bins=5).bins == 5 and AudioNTT2020(64, 16).d == 16
    for name in ("load_model", "pretrain", "probe", "listen", "RandomizedQuantization"):
        assert name in audiorq.__doc__
    assert probe.linear_probe is not None  # still the package, and callable
    assert json.loads(json.dumps(sorted(audiorq.__all__)))


def test_model_card_lists_this_encoders_probe_scores(tmp_path):
    _, info = load_encoder(str(FIXTURE))
    scores = tmp_path / "scores.csv"
    scores.write_text("encoder_hash,task,test_acc,quick_look\n"
                      f"{info.weights_hash[:16]},esc10,0.80,\n{info.weights_hash[:16]},esc10,0.90,\n"
                      f"{info.weights_hash[:16]},us8k,0.5,\n0123456789abcdef,esc10,0.10,\n"
                      f"{info.weights_hash[:16]},esc10,0.20,2\n")
    _, card = export_model(FIXTURE, tmp_path / "m.safetensors", scores_csv=scores)
    text = card.read_text()
    assert "| esc10 | 85.0 |" in text and "| us8k | 50.0 |" in text  # the quick look (20 %) is left out
    assert "10.0" not in text and "20.0" not in text


def test_cli_exports_an_onnx_graph_that_matches_the_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = CliRunner().invoke(main, ["export", str(FIXTURE), str(tmp_path / "tiny.onnx"), "--license", "MIT"])
    assert result.exit_code == 0, result.output
    assert "AudioNTT2020" in (tmp_path / "tiny.md").read_text()
    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    x = tones(2, seconds=0.8)
    (onnx_out,) = session.run(None, {"waveform": x.numpy()})
    expected = load_model(FIXTURE)(x).numpy()
    assert np.abs(onnx_out - expected).max() <= 1e-4 * np.abs(expected).max()
