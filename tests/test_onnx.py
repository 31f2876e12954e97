"""ONNX export: the waveform -> embedding graph agrees with AudioModel on real audio and a chirp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx's dynamo exporter translates with it

from audiorq import __version__  # noqa: E402  (after the importorskips: skip before importing the exporter)
from audiorq.audio import load_audio  # noqa: E402
from audiorq.config import FrontendConfig  # noqa: E402
from audiorq.model import AudioModel  # noqa: E402
from audiorq.models.ntt import AudioNTT2020  # noqa: E402
from audiorq.onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx, read_onnx_metadata  # noqa: E402

from conftest import make_chirp  # noqa: E402

D = 64
NORM = (-6.0, 3.0)
RTOL = 1e-4  # max |onnx - torch| allowed, relative to max |embedding|


def small_model(seed: int = 0) -> AudioModel:
    """A random 64-d AudioModel; BatchNorm running statistics randomized too, so their folding is tested."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = AudioNTT2020(n_mels=64, d=D)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return AudioModel(encoder, FrontendConfig(), NORM)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[AudioModel, Path, "ort.InferenceSession"]:
    """(model, exported .onnx path, onnxruntime session), one export for the whole module."""
    model = small_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, path, session


def run_both(exported, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(onnxruntime, PyTorch) embeddings (B, D) of waveforms (B, S)."""
    model, _, session = exported
    out = session.run([OUTPUT_NAME], {INPUT_NAME: wave.numpy().astype(np.float32)})[0]
    return out, model(wave).numpy()


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|."""
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_graph_io_opset_and_metadata(exported):
    model, path, session = exported
    assert path.is_file() and path.suffix == ".onnx"
    assert not [p for p in path.parent.iterdir() if p != path]  # the atomic write leaves no temporary file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == DEFAULT_OPSET == 17
    assert proto.ir_version == 8  # the oldest IR that carries opset 17, for older runtimes
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type == out.type == "tensor(float)"
    assert all(isinstance(d, str) for d in inp.shape)  # both axes symbolic: dynamic batch and length
    assert isinstance(out.shape[0], str) and out.shape[1] == D
    meta = read_onnx_metadata(path)
    assert meta == session.get_modelmeta().custom_metadata_map
    assert meta["sample_rate"] == "16000"
    assert int(meta["embedding_size"]) == D
    assert (float(meta["norm_mean"]), float(meta["norm_std"])) == NORM
    assert meta["audiorq_version"] == __version__
    assert int(meta["min_samples"]) == model.min_samples == 1120


def test_chirp_matches_pytorch_across_batch_and_length(exported):
    chirp = make_chirp(2.0)
    down = make_chirp(2.0, f0=6000.0, f1=200.0) * 0.3
    out, ref = run_both(exported, torch.stack([chirp, down]))  # batch of 2, 32000 samples
    assert out.shape == (2, D)
    assert rel_error(out, ref) <= RTOL
    assert not np.allclose(out[0], out[1])  # two different clips, two embeddings
    # Second call, other batch size and length (and a frame count of other parity) on the same session.
    out3, ref3 = run_both(exported, torch.stack([chirp[:11_360], down[5000:16_360], chirp[-11_360:]]))
    assert out3.shape == (3, D)
    assert rel_error(out3, ref3) <= RTOL


@pytest.mark.parametrize("samples", [1, 37, 600, 1119, 1120, 1121, 1279, 1280, 1440, 2720, 3999])
def test_short_and_boundary_lengths_pad_like_the_model(exported, samples):
    # Below min_samples the graph must zero-pad as AudioModel does; just above it the frame counts after each
    # pool are 1, odd and even, the cases the tracer could only assume at export time.
    g = torch.Generator().manual_seed(samples)
    wave = torch.randn(2, samples, generator=g) * 0.2
    out, ref = run_both(exported, wave)
    assert out.shape == (2, D)
    assert rel_error(out, ref) <= RTOL
    one, _ = run_both(exported, wave[:1])  # batch 1: the embedding does not depend on the batch
    np.testing.assert_allclose(one[0], out[0], rtol=0, atol=RTOL * np.abs(ref).max())


def test_real_audio_matches_pytorch(exported, shared_data):
    esc = sorted((shared_data / "esc10").glob("*/*.ogg"))
    envs = [load_audio(esc[0]), load_audio(esc[len(esc) // 2])]  # 44.1 kHz ogg, resampled to 16 kHz
    n = min(w.shape[-1] for w in envs)
    out, ref = run_both(exported, torch.stack([w[:n] for w in envs]))  # batch of 2, equal length (~5 s)
    errors = {"esc10": rel_error(out, ref)}
    speech = [load_audio(shared_data / "fsdd" / "recordings" / name) for name in ("3_theo_7.wav", "0_george_0.wav")]
    m = min(w.shape[-1] for w in speech)  # 8 kHz wav, well under a second: another length, same session
    out2, ref2 = run_both(exported, torch.stack([w[:m] for w in speech]))
    errors["fsdd"] = rel_error(out2, ref2)
    print(f"onnx vs torch, max |delta| / max |embedding|: {errors}")
    assert max(errors.values()) <= RTOL, errors


def test_rejects_opset_below_17(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(small_model(), tmp_path / "old.onnx", opset=16)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("opset", [18, 20])
def test_newer_opsets_match_pytorch(tmp_path, opset):
    # Native exporter opsets (no version conversion); a second export each, so slow.
    model = small_model(1)
    path = export_onnx(model, tmp_path / f"opset{opset}.onnx", opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for wave in (make_chirp(1.3).unsqueeze(0), torch.randn(2, 777, generator=torch.Generator().manual_seed(3))):
        out = session.run([OUTPUT_NAME], {INPUT_NAME: wave.numpy()})[0]
        assert rel_error(out, model(wave).numpy()) <= RTOL
