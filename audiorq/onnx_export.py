"""An `AudioModel` as one ONNX graph: waveform (B, S) float32 16 kHz -> clip embedding (B, D).

The whole chain runs inside the graph: zero-padding of short clips, the centred STFT (reflect padding,
periodic Hann), power, mel filterbank, log(mel + eps), normalization and AudioNTT2020, so a consumer
needs nothing but an ONNX runtime. Batch and length axes are dynamic.

Exporter: torch 2.11's dynamo path. `torch.export.export(strict=False)` captures the module with symbolic
batch and length dimensions, then `torch.onnx.export(ExportedProgram, dynamo=True)` (onnxscript) translates
and optimizes it at opset 18, its lowest; opset 17 (the default) comes from the ONNX version converter. The
length-dependent padding becomes Shape/Max/Sub/Slice ops: one graph serves every clip length. The legacy
TorchScript exporter (`dynamo=False`) is deprecated in 2.11, and its tracer sees sizes as tensors, so the
symbolic-int padding arithmetic does not trace there.

The STFT is not exported through `torch.stft` (complex tensors have no faithful ONNX form across opsets and
runtimes): an export-only module computes it as a strided conv1d with windowed-DFT cos/sin kernels, equal
to the frontend up to float32 rounding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from audiorq import __version__
from audiorq.atomic import atomic_write
from audiorq.model import AudioModel

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "waveform"
OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 17


def dft_kernels(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """Windowed DFT kernels (2 * (n_fft // 2 + 1), 1, n_fft): rows cos then -sin, window centred in n_fft."""
    win = window.detach().to("cpu", torch.float64)
    if win.numel() < n_fft:
        # torch.stft centres a shorter window inside the n_fft frame (zeros on both sides); do the same.
        left = (n_fft - win.numel()) // 2
        win = nn.functional.pad(win, (left, n_fft - win.numel() - left))
    n_freq = n_fft // 2 + 1
    # float64 angles and products, rounded once to float32: the kernel itself adds no error beyond storage.
    k = torch.arange(n_freq, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
    angle = 2.0 * math.pi * ((k * n) % n_fft) / n_fft  # reduce k*n mod N first: exact angles for large k*n
    kernels = torch.cat([torch.cos(angle) * win, -torch.sin(angle) * win], dim=0)
    return kernels.to(torch.float32).unsqueeze(1)


def reflect_pad(wave: torch.Tensor, p: int) -> torch.Tensor:
    """(B, S) -> (B, S + 2p), mirrored without repeating the edge sample, as torch.stft(pad_mode="reflect").

    Written as flipped slices rather than F.pad: the exporter emits opset-18 Pad (pads + axes inputs), which
    the ONNX version converter cannot take down to opset 17; Slice and Concat convert cleanly.
    """
    s = wave.shape[1]
    torch._check(s > p)  # true after `pad_short` (min_samples > n_fft // 2); tells the tracer the slice sizes
    # Indices counted from the start: negative ones on a symbolic length make the tracer lose the sizes.
    return torch.cat([wave[:, 1 : p + 1].flip(1), wave, wave[:, s - p - 1 : s - 1].flip(1)], dim=1)


class OnnxWaveformModel(nn.Module):
    """Export-only twin of `AudioModel`: waveform (B, S) -> embedding (B, D), STFT as conv1d."""

    def __init__(self, model: AudioModel):
        super().__init__()
        fe = model.frontend
        self.n_fft, self.hop_length = int(fe.n_fft), int(fe.hop_length)
        self.n_freq = self.n_fft // 2 + 1
        self.min_samples = int(model.min_samples)
        self.eps = float(fe.eps)
        self.norm_mean, self.norm_std = float(model.norm_mean), float(model.norm_std)
        self.register_buffer("dft", dft_kernels(self.n_fft, fe.window))
        # (n_mels, n_freq): the transpose the frontend multiplies with, stored so the graph has no Transpose.
        self.register_buffer("mel_fb_t", fe.mel_filterbank.detach().to("cpu", torch.float32).T.contiguous())
        self.encoder = _cpu_copy(model.encoder)

    def pad_short(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, max(S, min_samples)): zeros at both ends, floor half at the head, as pad_or_crop."""
        # Pad every clip by the full minimum on both sides, then slice the window the model would see;
        # start/stop are symbolic in S, so this is one graph for short and long clips alike.
        s = wave.shape[1]
        deficit = torch.sym_max(self.min_samples - s, 0)
        start = self.min_samples - deficit // 2
        zeros = wave.new_zeros(wave.shape[0], self.min_samples)  # cat, not Pad: see `reflect_pad`
        padded = torch.cat([zeros, wave, zeros], dim=1)
        return padded[:, start : start + s + deficit]

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> power of the centred STFT (B, n_freq, 1 + S // hop)."""
        spec = nn.functional.conv1d(reflect_pad(wave, self.n_fft // 2).unsqueeze(1), self.dft,
                                    stride=self.hop_length)  # (B, 2 * n_freq, T)
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]
        return re * re + im * im

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Clip embeddings (B, D) from float32 waveforms (B, S)."""
        mel = torch.matmul(self.mel_fb_t, self.power_spectrogram(self.pad_short(wave)))  # (B, n_mels, T)
        lms = (torch.log(mel + self.eps).unsqueeze(1) - self.norm_mean) / self.norm_std
        return self.encoder(lms)


def _cpu_copy(module: nn.Module) -> nn.Module:
    """A frozen eval-mode CPU copy, so exporting never moves or changes the caller's model."""
    import copy

    return copy.deepcopy(module).to("cpu").eval().requires_grad_(False)


def onnx_metadata(model: AudioModel) -> dict[str, str]:
    """The key/value strings stored in the graph's metadata_props."""
    f = model.frontend_config
    return {
        "producer": "audiorq",
        "audiorq_version": __version__,
        "architecture": "AudioNTT2020",
        "input": f"{INPUT_NAME}: float32 (batch, samples), mono, {model.sample_rate} Hz, in [-1, 1]",
        "output": f"{OUTPUT_NAME}: float32 (batch, {model.embedding_size})",
        "sample_rate": str(model.sample_rate),
        "embedding_size": str(model.embedding_size),
        "norm_mean": repr(float(model.norm_mean)),
        "norm_std": repr(float(model.norm_std)),
        "min_samples": str(model.min_samples),
        "short_clips": "zero-padded at both ends (floor half at the head) to min_samples inside the graph",
        "n_fft": str(f.n_fft), "win_length": str(f.win_length), "hop_length": str(f.hop_length),
        "n_mels": str(f.n_mels), "f_min": repr(float(f.f_min)), "f_max": repr(float(f.f_max)),
        "mel_scale": f.mel_scale,
    }


def export_onnx(model: AudioModel, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` as ONNX (input "waveform" (B, S) float32 -> output "embedding" (B, D)), atomically.

    Batch and length are dynamic. Clips shorter than `model.min_samples` (7 hops, 1120 samples at the
    defaults) are zero-padded inside the graph exactly as `AudioModel` pads them; S >= 1 is required.
    `opset` >= 17. Returns the path written; the caller decides about overwriting (`audiorq.export`).
    """
    import onnx
    import onnx.helper
    import onnx.version_converter

    if opset < 17:
        raise ValueError(f"opset must be >= 17, the oldest this export is tested at; got {opset}")
    path = Path(path)
    wrapper = OnnxWaveformModel(model).eval()
    # Example longer than min_samples, batch > 1, and a length whose frame counts are no special values
    # (35 frames -> 17 -> 8 -> 4 after the pools): nothing is traced through a size-0/1 branch.
    example = torch.zeros(2, model.min_samples + 4321, dtype=torch.float32)
    dims = {"wave": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=1)}}
    with torch.no_grad(), _quiet_exporter():
        # Capture with torch.export ourselves (non-strict) instead of letting torch.onnx.export try its
        # strategies in turn: one deterministic path. Shape facts the tracer cannot prove for every length
        # (parities and size != 1 checks from stride and contiguity bookkeeping) become deferred runtime
        # asserts instead of specializing the graph; the ONNX translation drops them, and the ONNX ops
        # themselves are length-generic. tests/test_onnx.py runs lengths on both sides of each of them.
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dims, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        # The dynamo exporter emits opset 18 at the lowest (torchlib); older opsets come from the ONNX
        # version converter below, run after the exporter's optimizer has folded Reduce* axes to
        # initializers (the converter needs constant axes).
        onnx_program = torch.onnx.export(program, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         opset_version=max(opset, 18), dynamo=True, external_data=False,
                                         verbose=False)
    proto = onnx_program.model_proto
    if _default_opset(proto) != opset:
        proto = _drop_defaulted_reduce_attribute(onnx.version_converter.convert_version(proto, opset))
    if _default_opset(proto) != opset:  # a silent no-op conversion must not pass for the asked-for opset
        raise RuntimeError(f"ONNX export produced opset {_default_opset(proto)}, not the requested {opset}")
    if not proto.functions:
        # The exporter stamps its own IR version (10); the oldest one that carries this opset lets older
        # runtimes, the reason to ask for an old opset, load the file too.
        proto.ir_version = min(proto.ir_version, onnx.helper.find_min_ir_version_for(proto.opset_import))
    proto.doc_string = (f"audiorq {__version__} AudioNTT2020: {INPUT_NAME} (batch, samples) float32 "
                        f"{model.sample_rate} Hz -> {OUTPUT_NAME} (batch, {model.embedding_size})")
    del proto.metadata_props[:]
    for key, value in onnx_metadata(model).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)  # refuse to write a graph the reference checker rejects
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter chatter that says nothing about this graph (`audiorq export` prints to users)."""
    # torch.onnx logs one warning per torchvision op it cannot register when torchvision is absent, and
    # torch.export warns about a deprecated pytree API inside torch itself.
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        log.setLevel(level)


def _drop_defaulted_reduce_attribute(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """Remove `noop_with_empty_axes=0` where the converted opset's Reduce* schema has no such attribute.

    The 18 -> 17 converter moves ReduceMax/ReduceMean axes back to an attribute but keeps this opset-18
    attribute, which the checker (full check) rejects. Its value 0 is the opset-18 default, meaning the
    behaviour opset 17 has anyway, so dropping it changes nothing; any other value is refused.
    """
    import onnx.defs

    version = _default_opset(proto)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        known = onnx.defs.get_schema(node.op_type, version, "").attributes
        kept = []
        for attr in node.attribute:
            if attr.name == "noop_with_empty_axes" and attr.name not in known:
                if attr.i != 0:
                    raise RuntimeError(f"{node.name}: noop_with_empty_axes={attr.i} has no opset-{version} form")
                continue
            kept.append(attr)
        if len(kept) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(kept)
    return proto


def _default_opset(proto: "onnx.ModelProto") -> int:
    """Opset version of the default ("" / ai.onnx) domain of a ModelProto."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an exported graph as a dict (reads the file with onnx, no runtime needed)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}

