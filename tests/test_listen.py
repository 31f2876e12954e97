"""Log-mel inversion (audiorq.listen.invert), figures and the `listen` pipeline and command."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import audiorq.listen
from audiorq.audio import AudioError, load_audio
from audiorq.config import SAMPLE_RATE, ConfigError, FrontendConfig, recipe_section
from audiorq.frontend import LogMelSpectrogram
from audiorq.listen import ListenError, listen
from audiorq.listen.figures import FIGURE_DPI, figure_size
from audiorq.listen.invert import (
    InverseLogMel, griffin_lim, invert_logmel, invert_with_quality, logmel_error, logmel_to_magnitude,
    mel_to_power, spectral_convergence,
)
from conftest import REPO, make_chirp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HOP = 160


@pytest.fixture(scope="module")
def frontend() -> LogMelSpectrogram:
    return LogMelSpectrogram()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write_wav(path: Path, wave: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    sf.write(str(path), wave.astype(np.float32), sr)
    return path


@pytest.fixture
def speech_like(tmp_path: Path) -> Path:
    """0.6 s harmonic tone with a vibrato and noise, 22.05 kHz: a real file to resample and invert."""
    sr = 22050
    t = np.arange(int(0.6 * sr)) / sr
    f0 = 180 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 8))
    wave = wave + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return _write_wav(tmp_path / "tone.wav", wave, sr)


# ----------------------------------------------------------------------------------------------
# Inversion


@pytest.mark.parametrize("solver", ["kl", "ls"])
def test_mel_to_power_is_nonnegative_and_reproduces_the_mel(frontend, solver):
    fb = frontend.mel_filterbank
    g = torch.Generator().manual_seed(0)
    # A smooth non-negative power spectrogram (speech-like envelope), unit peak.
    power = torch.rand(2, fb.shape[0], 20, generator=g) ** 4
    power = torch.nn.functional.avg_pool1d(power.transpose(1, 2), 9, 1, 4).transpose(1, 2)
    power = power / power.amax()
    mel = fb.T @ power
    start = mel_to_power(mel, fb, iterations=0)
    solved = mel_to_power(mel, fb, iterations=60, solver=solver)
    assert solved.shape == power.shape and (solved >= 0).all()

    def rel_err(p):
        return float(((fb.T @ p - mel).norm() / mel.norm()))

    assert rel_err(solved) < 0.05
    assert rel_err(solved) < rel_err(start)  # the iterations improve on the clamped pseudo-inverse


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("device", DEVICES)
def test_chirp_round_trip(device, mel_scale):
    fe = LogMelSpectrogram(mel_scale=mel_scale).to(device)
    logmel = fe(make_chirp(2.0).to(device))
    wave, (quality,) = invert_with_quality(logmel, fe, n_iter=32)
    assert wave.shape == (1, (logmel.shape[-1] - 1) * HOP) and wave.device.type == device
    assert quality.logmel_error <= 1.0
    # More Griffin-Lim iterations make the STFT more consistent with the target magnitude.
    _, (few,) = invert_with_quality(logmel, fe, n_iter=2)
    assert quality.spectral_convergence < few.spectral_convergence


def test_real_clips_round_trip(frontend, real_clips):
    """The acceptance threshold: mean |Δ log-mel| <= 1.0 nat on speech (FSDD) and ESC-10 clips."""
    for path in real_clips:
        logmel = frontend(load_audio(path))
        _, (quality,) = invert_with_quality(logmel, frontend, n_iter=32)
        assert quality.logmel_error <= 1.0, f"{path.name}: {quality}"
        assert quality.spectral_convergence < 0.5, f"{path.name}: {quality}"


def test_accepted_shapes_and_batching(frontend):
    g = torch.Generator().manual_seed(1)
    waves = torch.randn(2, 4000, generator=g) * torch.tensor([[0.3], [0.01]])
    logmel = frontend(waves)  # (2, 1, 64, T)
    batched = invert_logmel(logmel, frontend, n_iter=4)
    assert batched.shape == (2, (logmel.shape[-1] - 1) * HOP)
    for i in range(2):
        alone = invert_logmel(logmel[i, 0], frontend, n_iter=4)  # (F, T)
        # Not bit-equal: the FFT library may round a batch differently from one item (seen on AVX-512 CPUs),
        # and Griffin-Lim's momentum amplifies it to ~0.2 %; items mixed up or mis-scaled would be off by O(1).
        relative = torch.linalg.vector_norm(alone[0] - batched[i]) / torch.linalg.vector_norm(batched[i])
        assert relative < 1e-2, (i, relative)
    assert torch.equal(invert_logmel(logmel[:, 0], frontend, n_iter=4), batched)  # (B, F, T)
    with pytest.raises(ValueError, match="log-mel"):
        invert_logmel(logmel.expand(2, 2, -1, -1), frontend)
    with pytest.raises(ValueError, match="n_iter"):
        invert_logmel(logmel, frontend, n_iter=0)


def test_scale_safe(frontend):
    """Loud inputs scale the output exactly; quiet ones stay finite and accurate; no overflow in exp."""
    wave = make_chirp(0.5)
    logmel = frontend(wave)
    # 20 nats up, the log's eps is negligible, so the level is a pure gain; 60 more: exp(logmel) alone
    # would overflow float32 (1e26 x the power).
    base = invert_logmel(logmel + 20.0, frontend, n_iter=8)
    shift = 60.0
    loud = invert_logmel(logmel + 20.0 + shift, frontend, n_iter=8)
    assert torch.isfinite(loud).all()
    # Equal up to float32 rounding of the shifted log-mel, which Griffin-Lim amplifies a little.
    assert float((loud / np.exp(shift / 2) - base).norm() / base.norm()) < 0.01
    quiet = frontend(wave * 1e-3)
    _, (quality,) = invert_with_quality(quiet, frontend, n_iter=32)
    assert quality.logmel_error <= 1.0
    # The solve works on unit-peak power: its result does not depend on the level.
    m1, g1 = logmel_to_magnitude(logmel + 20.0, frontend)
    m2, g2 = logmel_to_magnitude(logmel + 20.0 + shift, frontend)
    torch.testing.assert_close(m1, m2, rtol=1e-2, atol=1e-4)  # unit peak; float32 rounding of the input
    torch.testing.assert_close(g2 / g1, torch.full_like(g1, np.exp(shift / 2)), rtol=1e-6, atol=0)


def test_floor_logmel_inverts_to_silence(frontend):
    floor = torch.full((1, 1, 64, 50), float(np.log(frontend.eps)))
    wave = invert_logmel(floor, frontend, n_iter=4)
    # mel = exp(x) - eps is 0 up to float32 rounding: the output is below one 16-bit step (3e-5).
    assert torch.isfinite(wave).all() and float(wave.abs().max()) < 1e-5


def test_quality_measures_detect_a_wrong_waveform(frontend):
    logmel = frontend(make_chirp(0.5))
    magnitude, _ = logmel_to_magnitude(logmel, frontend)
    unit = griffin_lim(magnitude, frontend, n_iter=16)
    other = griffin_lim(magnitude.flip(-1), frontend, n_iter=16)  # time-reversed chirp: the wrong sound
    assert spectral_convergence(magnitude, unit, frontend) < 0.5 * spectral_convergence(magnitude, other, frontend)
    good = float(logmel_error(logmel, invert_logmel(logmel, frontend, n_iter=16), frontend))
    bad = float(logmel_error(logmel, invert_logmel(logmel.flip(-1), frontend, n_iter=16), frontend))
    assert good < 1.0 < bad


def test_inverse_logmel_module_equals_the_function(frontend):
    logmel = frontend(torch.stack([make_chirp(0.5), 0.1 * make_chirp(0.5, f0=300, f1=3000)]))  # (2, 1, F, T)
    module = InverseLogMel(frontend, n_iter=4, nnls_iterations=10, solver="ls")
    expected = invert_logmel(logmel, frontend, n_iter=4, nnls_iterations=10, solver="ls")
    assert torch.equal(module(logmel), expected)
    length = (logmel.shape[-1] - 1) * HOP + HOP // 2  # any length that still gives T frames
    assert module(logmel, length=length).shape == (2, length)
    assert module.frontend is frontend  # a submodule: .to(device) moves its filterbank and window
    with pytest.raises(ValueError, match="n_iter"):
        InverseLogMel(frontend, n_iter=0)
    with pytest.raises(ValueError, match="solver"):
        InverseLogMel(frontend, solver="nnls")


def test_invert_module_imports_no_io_config_or_plotting():
    """invert.py alone (loaded from its file, without the pipeline in the package __init__) pulls in none of
    matplotlib, yaml, librosa, audiorq.config or audiorq.augment: importing them is made to fail."""
    code = f"""
import importlib.abc, importlib.util, sys
BLOCKED = ("matplotlib", "yaml", "librosa", "audiorq.augment", "audiorq.config", "audiorq.listen")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("invert_alone", {str(REPO / "audiorq" / "listen" / "invert.py")!r})
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(module)
assert callable(module.invert_logmel) and issubclass(module.InverseLogMel, module.nn.Module)
loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_package_exports_and_removed_reader():
    """Every public name stays importable from audiorq.listen; the private recipe reader is gone."""
    from audiorq.listen import figures, invert

    for module in (invert, figures):
        for name in module.__all__:
            assert getattr(audiorq.listen, name) is getattr(module, name), name
    for name in audiorq.listen.__all__:
        assert hasattr(audiorq.listen, name), name
    for name in ("_read_recipe", "read_recipe_augment", "read_recipe_frontend"):
        assert not hasattr(audiorq.listen, name), name
    # Importing the pipeline leaves matplotlib for the first figure (the CLI imports this module).
    done = subprocess.run([sys.executable, "-c", "import sys, audiorq.listen; assert 'matplotlib' not in sys.modules"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------------------------
# listen


def _read(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32")
    return data, sr


def test_listen_writes_audio_figure_and_manifest(speech_like, tmp_path):
    out = tmp_path / "out"
    result = listen(speech_like, augs=["rq"], views=2, seed=0, out_dir=out, n_iter=8)
    clip = load_audio(speech_like)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["listen.json", "original.wav", "view1.wav", "view2.wav", "views.png"]
    for wav in ["original.wav", "view1.wav", "view2.wav"]:
        data, sr = _read(out / wav)
        assert sr == SAMPLE_RATE
        assert abs(len(data) - clip.shape[-1]) <= HOP
        assert np.abs(data).max() > 0.01
    # Loudness matched to the original.
    rms = [float(np.sqrt(np.mean(_read(out / w)[0].astype(np.float64) ** 2))) for w in ["original.wav", "view1.wav"]]
    assert rms[1] == pytest.approx(rms[0], rel=0.02)
    width, height = figure_size(1, 3)
    assert _png_size(out / "views.png") == (round(width * FIGURE_DPI), round(height * FIGURE_DPI))
    manifest = json.loads((out / "listen.json").read_text())
    assert [v["file"] for v in manifest["views_written"]] == ["view1.wav", "view2.wav"]
    assert manifest["original"]["logmel_error"] == pytest.approx(result.original_quality.logmel_error)
    assert result.original_quality.logmel_error <= 1.0
    assert all(v.change > 0 for v in result.views)  # RQ changed the spectrogram
    assert "view2.wav" in result.table()


def test_listen_several_augs_names_files_per_aug_and_seed_reproduces(speech_like, tmp_path):
    kw = dict(views=2, n_iter=4)
    a = listen(speech_like, augs=["rq", "mixup", "rrc", "none"], seed=3, out_dir=tmp_path / "a", **kw)
    b = listen(speech_like, augs=["rq", "mixup", "rrc", "none"], seed=3, out_dir=tmp_path / "b", **kw)
    c = listen(speech_like, augs=["rq"], seed=4, out_dir=tmp_path / "c", **kw)
    only_rq = listen(speech_like, augs=["rq"], seed=3, out_dir=tmp_path / "d", **kw)
    # `none` views would all be identical: one is written, with a note.
    assert sorted(p.name for p in (tmp_path / "a").glob("*_view*.wav")) == sorted(
        [f"{aug}_view{i}.wav" for aug in ["rq", "mixup", "rrc"] for i in (1, 2)] + ["none_view1.wav"]
    )
    assert a.augmented["none"].shape[0] == 1 and any("none: one view written" in n for n in a.notes)
    for aug in ["rq", "mixup", "rrc"]:
        assert torch.equal(a.augmented[aug], b.augmented[aug])
        assert not torch.equal(a.augmented[aug][0], a.augmented[aug][1])  # views differ from each other
    for va, vb in zip(a.views, b.views):
        assert np.array_equal(_read(va.path)[0], _read(vb.path)[0])
    assert not torch.equal(a.augmented["rq"], c.augmented["rq"])  # another seed, other views
    # A row's views do not depend on the other rows.
    assert torch.equal(a.augmented["rq"], only_rq.augmented["rq"])
    assert torch.equal(a.augmented["none"][0], a.original_logmel[0])
    assert _png_size(tmp_path / "a" / "views.png") == tuple(round(s * FIGURE_DPI) for s in figure_size(4, 3))


def test_listen_recipe_and_bins(speech_like, tmp_path):
    recipe = tmp_path / "two_bins.yaml"
    recipe.write_text("augment:\n  chain: [rq]\n  rq: {bins: 2, random_values: false}\n")
    result = listen(speech_like, augs=[str(recipe), "rq"], bins=3, views=2, out_dir=tmp_path / "o", n_iter=2)
    assert set(result.augmented) == {"two_bins", "rq"}
    for name, limit in [("two_bins", 2), ("rq", 3)]:
        views = result.augmented[name][:, 0]  # (V, F, T)
        counts = [len(torch.unique(views[v, f])) for v in range(views.shape[0]) for f in range(views.shape[1])]
        assert max(counts) <= limit and max(counts) > 1
    (tmp_path / "bad.yaml").write_text("augment:\n  rq: {binz: 2}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*augment.rq.binz"):
        listen(speech_like, augs=[str(tmp_path / "bad.yaml")], out_dir=tmp_path / "o2")
    # The bins bound is RQConfig's; it only applies to the `rq` row.
    with pytest.raises(ConfigError, match=r"rq\.bins must be .*>= 1"):
        listen(speech_like, augs=["none", "rq"], bins=0, out_dir=tmp_path / "o3")
    assert not (tmp_path / "o3").exists()
    listen(speech_like, augs=["none"], bins=0, views=1, out_dir=tmp_path / "o4", n_iter=1)


def test_listen_frontend_from_recipe_section_and_device(speech_like, tmp_path):
    recipe = tmp_path / "htk.yaml"
    recipe.write_text("frontend: {mel_scale: htk, n_mels: 48}\n")
    frontend = recipe_section(FrontendConfig, recipe, "frontend")
    result = listen(speech_like, augs=["none"], views=1, out_dir=tmp_path / "o", n_iter=1, frontend=frontend,
                    device="auto")
    manifest = json.loads((tmp_path / "o" / "listen.json").read_text())
    assert (manifest["frontend"]["mel_scale"], manifest["frontend"]["n_mels"]) == ("htk", 48)
    assert result.original_logmel.shape[2] == 48
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            listen(speech_like, augs=["none"], out_dir=tmp_path / "gpu", device="cuda")
        assert not (tmp_path / "gpu").exists()


def test_listen_mixup_bank_sources(speech_like, tmp_path):
    other = _write_wav(tmp_path / "other.wav", 0.3 * make_chirp(0.3).numpy())
    for source in ["self", "noise", [str(other)]]:
        result = listen(speech_like, augs=["mixup"], views=2, out_dir=tmp_path / f"m{len(str(source))}",
                        mixup_with=source, n_iter=2)
        assert all(v.change > 0 for v in result.views), source
    with pytest.raises(AudioError, match="missing.wav"):
        listen(speech_like, augs=["mixup"], out_dir=tmp_path / "m", mixup_with=[str(tmp_path / "missing.wav")])


def test_listen_refuses_to_overwrite(speech_like, tmp_path):
    out = tmp_path / "out"
    listen(speech_like, augs=["none"], views=1, out_dir=out, n_iter=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ListenError, match="already holds listen outputs.*--overwrite") as refused:
        listen(speech_like, augs=["rq"], views=1, out_dir=out, n_iter=2)
    assert "overwrite=True" not in str(refused.value)  # the message speaks of the option, not the argument
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    listen(speech_like, augs=["rq"], views=1, out_dir=out, n_iter=2, overwrite=True)
    assert (out / "original.wav").read_bytes() == before["original.wav"]  # deterministic inversion
    assert (out / "view1.wav").read_bytes() != before["view1.wav"]


def test_listen_span_and_long_files(tmp_path):
    long = _write_wav(tmp_path / "long.wav", 0.3 * make_chirp(11.0, f0=200, f1=3000).numpy())
    result = listen(long, augs=["none"], views=1, out_dir=tmp_path / "a", n_iter=1)
    assert result.duration == pytest.approx(10.0) and any("10 s" in n or "10)" in n for n in result.notes)
    result = listen(long, augs=["none"], views=1, out_dir=tmp_path / "b", n_iter=1, start=2.0, duration=0.5)
    assert (result.start, result.duration) == (2.0, pytest.approx(0.5)) and not result.notes
    assert abs(len(_read(result.original)[0]) - 8000) <= HOP


def test_listen_bad_inputs(tmp_path, speech_like):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        listen(tmp_path / "nope.wav", out_dir=tmp_path / "o")
    garbage = tmp_path / "notes.wav"
    garbage.write_text("this is not audio\n" * 100)
    with pytest.raises(AudioError, match="notes.wav: unreadable"):
        listen(garbage, out_dir=tmp_path / "o")
    silent = _write_wav(tmp_path / "silent.wav", np.zeros(SAMPLE_RATE))
    with pytest.raises(AudioError, match="silent.wav: silent"):
        listen(silent, out_dir=tmp_path / "o")
    short = _write_wav(tmp_path / "short.wav", 0.1 * np.ones(500))
    with pytest.raises(AudioError, match="short.wav: too short"):
        listen(short, out_dir=tmp_path / "o")
    with pytest.raises(ListenError, match="unknown augmentation 'chorus'"):
        listen(speech_like, augs=["rq", "chorus"], out_dir=tmp_path / "o")
    with pytest.raises(ListenError, match="views"):
        listen(speech_like, views=0, out_dir=tmp_path / "o")
    with pytest.raises(ListenError, match="twice"):
        listen(speech_like, augs=["rq", "rq"], out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_cli_listen(speech_like, tmp_path):
    from audiorq.cli import main

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["listen", str(speech_like), "--aug", "rq,rrc", "--views", "2", "--iters", "2", "--device", "cpu",
            "--seed", "5", "--out", str(out)]
    ok = runner.invoke(main, args)
    assert ok.exit_code == 0, ok.output
    assert "rq_view2.wav" in ok.output and "rrc_view1.wav" in ok.output and "views.png" in ok.output
    assert (out / "rrc_view2.wav").is_file()
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    recipe = tmp_path / "htk.yaml"
    recipe.write_text("frontend: {mel_scale: htk, n_mels: 48}\n")
    assert runner.invoke(main, args + ["--overwrite", "--frontend-recipe", str(recipe)]).exit_code == 0
    manifest = json.loads((out / "listen.json").read_text())
    assert (manifest["frontend"]["mel_scale"], manifest["frontend"]["n_mels"]) == ("htk", 48)
    missing = runner.invoke(main, ["listen", str(tmp_path / "none.ogg"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "none.ogg: file not found" in missing.output


def test_cli_listen_default_out_names_the_augs_and_frontend_alias(speech_like, tmp_path, monkeypatch):
    from audiorq.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = [str(speech_like), "--views", "1", "--iters", "1", "--device", "cpu"]
    first = runner.invoke(main, ["listen", *base, "--aug", "rq"])
    second = runner.invoke(main, ["listen", *base, "--aug", "rrc,none"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (tmp_path / "listen_tone_rq" / "view1.wav").is_file()
    assert (tmp_path / "listen_tone_rrc_none" / "rrc_view1.wav").is_file()
    recipe = tmp_path / "htk.yaml"
    recipe.write_text("frontend: {mel_scale: htk, n_mels: 48}\n")
    old = runner.invoke(main, ["listen", *base, "--aug", "none", "--frontend", str(recipe)])
    assert old.exit_code == 0 and "--frontend-recipe" in old.output, old.output
    assert json.loads((tmp_path / "listen_tone_none" / "listen.json").read_text())["frontend"]["n_mels"] == 48
    assert "--frontend-recipe" in runner.invoke(main, ["listen", "--help"]).output


def test_listen_figure_axis_in_file_time_and_low_rate_note(tmp_path, monkeypatch):
    drawn = {}
    real = audiorq.listen.draw_views

    def spy(*args, **kwargs):
        drawn.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(audiorq.listen, "draw_views", spy)
    clip = _write_wav(tmp_path / "digit.wav", 0.3 * make_chirp(2.0, sr=8000, f0=200, f1=3000).numpy(), 8000)
    result = listen(clip, augs=["none"], views=1, out_dir=tmp_path / "o", n_iter=1, start=1.0, duration=0.5)
    assert drawn["start"] == 1.0
    assert any("8000 Hz: upsampled to 16000 Hz" in n for n in result.notes)


def test_kernel_compile_is_announced_only_when_not_compiled(monkeypatch, tmp_path):
    import types

    from audiorq.augment import quantize
    from audiorq.listen import compile_note

    kernel = types.SimpleNamespace(signatures=[], py_func=lambda: None)
    fake = types.ModuleType("quantize_kernel")
    fake.__file__ = str(tmp_path / "quantize_kernel.py")
    fake.kernel = kernel
    monkeypatch.setattr(quantize, "_kernels", lambda: fake)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    lines: list[str] = []
    compile_note.announce_kernel_compile(lines.append)
    assert len(lines) == 1 and "compiling the RQ kernel" in lines[0]
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "quantize_kernel.kernel-1.py311.nbi").write_bytes(b"")
    compile_note.announce_kernel_compile(lines.append)  # cached on disk: loading is quick
    kernel.signatures = ["(float32[:],)"]
    (tmp_path / "__pycache__" / "quantize_kernel.kernel-1.py311.nbi").unlink()
    compile_note.announce_kernel_compile(lines.append)  # compiled in this process
    assert len(lines) == 1
