"""WebDataset tar shards for pretraining: the shard index (shards.json), the epoch plan, the shard writer, and
`WebDatasetShards`, the iterable dataset of random crops that streams them.

A shard is a plain tar file in the WebDataset convention: the members of one sample share a key (the name up
to its first dot) and sit next to each other. A sample's content is its first member with an audio extension
(flac, wav, ogg, mp3; decoded, resampled and cropped as `AudioFolder` does) or its `.npy` member (float16
log-mel (frames, n_mels), cropped as `LogMelShards` does); other members (`.json`, `.txt`) are ignored.

Index (written last by `audiorq prepare webdataset`, readable by the `wids` indexed reader too):

    {"__kind__": "wids-shard-index-v1", "wids_version": 1,
     "shardlist": [{"url": "shard-000000.tar", "nsamples": 1000, "filesize": 123456789}, ...],
     "audiorq": {"format": "audiorq-webdataset", "version": 1, "content": "audio" | "logmel",
                 "frontend": {...} (logmel), "stats": {"mean": .., "std": ..} (logmel), "n_bad": .., "bad": [..]}}

Shards without an index (made by another tool) are counted once by reading their tar headers; the counts are
cached in `cache_dir`. Only local files are read.

The epoch plan (`plan_epoch`) makes every rank take the same number of batches and every sample appear at
most once per epoch: the shards, in an order shuffled by (seed, epoch), are laid end to end; rank r takes
the r-th of world_size equal runs of whole batches (the remainder, under one batch per rank, waits for the
next epoch, whose shard order differs); a rank's run is cut into one contiguous stream per DataLoader
worker. So each rank reads its own shards (a shard on the border of two runs is read in part by both).
Each stream shuffles its samples in a buffer of `shuffle_buffer` undecoded samples. The DataLoader hands
out the workers' batches in turn, so the order of a rank's batches is a pure function of (seed, epoch,
world size, num_workers, shuffle_buffer): a resumed run continues mid-epoch at the exact batch, as long as
num_workers is the same (checked at resume).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from audiorq.atomic import atomic_write, atomic_write_text
from audiorq.audio import AudioError, audio_bytes_info, decode_audio, printable_path, resampled_length
from audiorq.config import SAMPLE_RATE
from audiorq.data.pretrain.audio_folder import crop_offset, read_crop, report_bad_file
from audiorq.data.pretrain.logmel_shards import logmel_crop
from audiorq.data.pretrain.sampler import collate_skipping
from audiorq.data.pretrain.scan import AUDIO_EXTENSIONS, DataSourceError, MissingSourceError, default_cache_dir

log = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
FORMAT_NAME = "audiorq-webdataset"
FORMAT_VERSION = 1
CONTENTS = ("audio", "logmel")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
AUDIO_MEMBERS = tuple(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)
LOGMEL_MEMBER = "npy"
COUNT_CACHE_VERSION = 1
# WebDataset's own rule for metadata members ("__meta__" and the like), which readers skip.
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


def shard_name(shard_id: int) -> str:
    """File name of shard `shard_id` as `audiorq prepare webdataset` writes it."""
    return f"shard-{shard_id:06d}.tar"


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member by the WebDataset convention, None for a member no sample owns."""
    from webdataset.tariterators import base_plus_ext

    if _META_MEMBER.match(member_name) or _META_MEMBER.match(os.path.basename(member_name)):
        return None
    key, ext = base_plus_ext(member_name)
    return None if key is None else (key, ext.lower())


def content_of(extension: str) -> str:
    """Which content a member extension holds ("audio", "logmel"), "" for one that is not a sample's content."""
    last = extension.rsplit(".", 1)[-1]
    if last in AUDIO_MEMBERS:
        return "audio"
    return "logmel" if last == LOGMEL_MEMBER else ""


# ----------------------------------------------------------------------------------------------
# Shard lists and counts


def is_webdataset_source(source: str | os.PathLike) -> bool:
    """Whether `source` names WebDataset shards: an index file, a folder with one, or a tar file / pattern."""
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return (path / INDEX_FILE).is_file()
    return path.name == INDEX_FILE or text.endswith(SHARD_SUFFIXES) or "{" in text


def resolve_shards(source: str | os.PathLike) -> tuple[list[Path], dict | None, Path | None]:
    """The shard files `source` names, in order, the index they come with and its folder (None, None without).

    `source`: a folder (its shards.json, else its *.tar files sorted), an index file, or a tar file or
    brace pattern (/data/as-{000000..000999}.tar). DataSourceError / MissingSourceError name what is wrong.
    """
    text = os.fspath(source)
    if re.match(r"^[a-z][a-z0-9+.-]*:", text) and not Path(text).exists():
        raise DataSourceError(f"data.source {text}: only local shard files are read (mount or copy the shards)")
    path = Path(text)
    if path.is_dir() or path.name == INDEX_FILE:
        index_path = path / INDEX_FILE if path.is_dir() else path
        if index_path.is_file():
            index = read_index(index_path)
            return [index_path.parent / entry["url"] for entry in index["shardlist"]], index, index_path.parent
        if not path.is_dir():
            raise MissingSourceError(f"shard index not found: {printable_path(index_path)}")
        files = sorted(p for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES) and not p.name.startswith("."))
        if not files:
            raise DataSourceError(f"{printable_path(path)}: no {INDEX_FILE} and no tar shards "
                                  f"({', '.join(SHARD_SUFFIXES)}); make some with `audiorq prepare webdataset`")
        return files, None, None
    from braceexpand import braceexpand

    files = [Path(p) for p in braceexpand(text)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise MissingSourceError(f"data.source {text}: {len(missing)} of {len(files)} shard files not found, e.g. "
                                 f"{printable_path(missing[0])}")
    index_path = files[0].parent / INDEX_FILE
    return (files, read_index(index_path), index_path.parent) if index_path.is_file() else (files, None, None)


def read_index(path: Path) -> dict:
    """A shards.json, checked: its entries name files inside its own folder. DataSourceError if damaged."""
    try:
        index = json.loads(path.read_text())
        entries = index["shardlist"]
        for entry in entries:
            url = entry["url"]
            if (not isinstance(url, str) or os.path.isabs(url) or ".." in Path(url).parts or "://" in url
                    or url.startswith("pipe:")):
                raise DataSourceError(f"{printable_path(path)}: shard {url!r} is not a file inside the index's folder")
            if int(entry["nsamples"]) < 0:
                raise ValueError(f"nsamples {entry['nsamples']} < 0")
        meta = index.get("audiorq") or {}
        if meta and (meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION
                     or meta.get("content") not in CONTENTS):
            raise ValueError(f"not a {FORMAT_NAME} v{FORMAT_VERSION} index")
        return index
    except DataSourceError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataSourceError(f"{printable_path(path)}: damaged shard index ({type(e).__name__}: {e}); write it "
                              "again with `audiorq prepare webdataset`, or remove it to count the shards") from None


def count_tar_samples(path: Path) -> tuple[int, str]:
    """(samples, content of the first sample) of a tar shard, from its member headers (data is skipped)."""
    n, content, key = 0, "", None
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                split = sample_key(member.name) if member.isreg() else None
                if split is None:
                    continue
                if split[0] != key:
                    n, key = n + 1, split[0]
                if n == 1 and not content:
                    content = content_of(split[1])
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataSourceError(f"{printable_path(path)}: not a readable tar file ({type(e).__name__}: {e})") from None
    return n, content


@dataclasses.dataclass
class ShardTable:
    """The shards of a source: files, sample counts, what they hold, and the index's extras."""

    files: list[Path]
    counts: list[int]
    content: str  # "audio" or "logmel"
    frontend_config: dict[str, Any] | None = None  # the frontend a logmel index was prepared with
    stats: tuple[float, float] | None = None  # (mean, std) of a logmel index's log-mel

    @property
    def n_samples(self) -> int:
        """All samples of all shards."""
        return sum(self.counts)


def shard_table(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ShardTable:
    """Resolve `source` and count its samples: from its index where it has one, else from the tar headers (cached)."""
    files, index, index_root = resolve_shards(source)
    counts: list[int | None] = [None] * len(files)
    contents: list[str] = [""] * len(files)
    meta = (index or {}).get("audiorq") or {}
    if index is not None:
        listed = {os.path.normpath(e["url"]): e for e in index["shardlist"]}
        for i, f in enumerate(files):
            entry = listed.get(os.path.normpath(os.path.relpath(f, index_root)))
            size = entry.get("filesize") if entry else None
            if entry is not None and (size is None or _file_size(f) == size):
                counts[i], contents[i] = int(entry["nsamples"]), meta.get("content", "")
    todo = [i for i, c in enumerate(counts) if c is None]
    if todo:
        cache_path = Path(cache_dir or default_cache_dir()) / f"webdataset-{_digest(files)}.json"
        cached = _load_counts(cache_path)
        probed = 0
        for i in todo:
            stat = _stat(files[i])
            hit = cached.get(str(files[i].resolve()))
            if hit is not None and hit[:2] == stat:
                counts[i], contents[i] = hit[2], hit[3]
            else:
                counts[i], contents[i] = count_tar_samples(files[i])
                probed += 1
                cached[str(files[i].resolve())] = [*stat, counts[i], contents[i]]
        if probed:
            log.info("counted the samples of %d tar shard(s) of %s", probed, printable_path(os.fspath(source)))
            try:
                atomic_write_text(cache_path, json.dumps({"version": COUNT_CACHE_VERSION, "shards": cached}))
            except OSError as e:  # a read-only home: counting again next time is only slower
                log.warning("cannot write the shard count cache %s: %s", printable_path(cache_path), e)
    found = {c for c, n in zip(contents, counts) if n}
    content = meta.get("content") or (found.pop() if len(found) == 1 else "")
    if not content:
        what = (f"shards hold different content ({', '.join(sorted(found))})" if found else
                "no shard's first sample has an audio (" + ", ".join(AUDIO_MEMBERS) + f") or .{LOGMEL_MEMBER} member")
        raise DataSourceError(f"data.source {printable_path(os.fspath(source))}: {what}")
    stats = meta.get("stats")
    return ShardTable(files, [int(c) for c in counts], content, meta.get("frontend"),
                      (float(stats["mean"]), float(stats["std"])) if stats else None)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _digest(files: list[Path]) -> str:
    return hashlib.sha1("\n".join(str(f.resolve()) for f in files).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _load_counts(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
        return dict(data["shards"]) if data.get("version") == COUNT_CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# ----------------------------------------------------------------------------------------------
# The epoch plan


@dataclasses.dataclass(frozen=True)
class ShardSlice:
    """Samples [start, stop) of shard `shard` (indices in tar order)."""

    shard: int
    start: int
    stop: int


def batches_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank takes per epoch."""
    return (n_samples // world_size) // batch_size


def stream_batches(n_batches: int, n_streams: int) -> list[int]:
    """Batches of each of a rank's streams: as equal as possible, the first ones one more."""
    return [n_batches // n_streams + (c < n_batches % n_streams) for c in range(n_streams)]


def plan_epoch(counts: list[int], seed: int, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1,
               n_streams: int = 1) -> list[list[ShardSlice]]:
    """The slices each of this rank's `n_streams` streams reads in `epoch`; stream c holds exactly
    `stream_batches(...)[c] * batch_size` samples. A pure function of its arguments."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(counts), generator=g).tolist()
    ends = np.cumsum([counts[s] for s in order]).tolist()
    per_rank = batches_per_epoch(sum(counts), batch_size, world_size) * batch_size
    streams, lo = [], rank * per_rank
    for n in stream_batches(per_rank // batch_size, n_streams):
        hi = lo + n * batch_size
        streams.append(_cut(order, ends, lo, hi))
        lo = hi
    return streams


def _cut(order: list[int], ends: list[int], lo: int, hi: int) -> list[ShardSlice]:
    """Positions [lo, hi) of the shards laid end to end in `order` (cumulative counts `ends`), as slices."""
    slices = []
    i = bisect.bisect_right(ends, lo)
    while lo < hi:
        begin = ends[i - 1] if i else 0
        stop = min(hi, ends[i])
        if stop > lo:
            slices.append(ShardSlice(order[i], lo - begin, stop - begin))
        lo, i = stop, i + 1
    return slices


# ----------------------------------------------------------------------------------------------
# Writing


def write_tar_shard(path: str | os.PathLike, samples: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Write `samples` ({"__key__": key, ext: bytes, ...}) as one tar shard, atomically; (samples, bytes).

    Member times are 0, so the same samples always give the same bytes.
    """
    from webdataset import TarWriter

    n = 0

    def write(f) -> None:
        nonlocal n
        # An int time: a float one costs every member an extra pax header block.
        writer = TarWriter(f, encoder=False, mtime=0, user="audiorq", group="audiorq")
        for sample in samples:
            writer.write(sample)
            n += 1
        writer.close()

    atomic_write(path, write)
    return n, Path(path).stat().st_size


def write_index(dst: Path, entries: list[dict], meta: dict) -> None:
    """Write DST/shards.json (atomically) from the shards' entries ({"url", "nsamples", "filesize"}) and `meta`."""
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": entries,
             "audiorq": {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}}
    atomic_write_text(dst / INDEX_FILE, json.dumps(index, indent=1))


def logmel_member(lm: np.ndarray) -> bytes:
    """The .npy member of a float16 log-mel (frames, n_mels)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(lm, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class _Raw:
    """One sample slot of a stream, undecoded: its member, or why it has none."""

    item: int  # (shard << 32) | sample index: the crop's seed, as AudioFolder's item index is
    name: str  # shard path:key, for messages
    ext: str = ""
    data: bytes = b""
    error: str = ""


class WebDatasetShards(IterableDataset):
    """Random crops from WebDataset tar shards, streamed: batches (B, S) waves or (B, 1, n_mels, T) log-mel.

    Iterating gives this rank's batches of the current epoch as `collate_skipping` gives them,
    (batch or None, n_bad); call `configure` once and `set_epoch` before each epoch. Crops are drawn by
    `crop_offset(seed, epoch, item)` as in AudioFolder; a bad member (undecodable, wrong shape, a sample
    without content, a shard that ends early or cannot be read) counts as a bad item, so every rank still
    takes the same number of batches.
    """

    epoch_in_shared_memory = True  # so the training loop may keep its DataLoader workers across epochs

    def __init__(self, source: str | os.PathLike, crop_sec: float = 0.95, crop_frames: int = 96,
                 sample_rate: int = SAMPLE_RATE, n_mels: int | None = None, seed: int = 0, shuffle_buffer: int = 500,
                 cache_dir: str | os.PathLike | None = None):
        if int(seed) < 0 or shuffle_buffer < 0:
            raise ValueError(f"seed and shuffle_buffer must be >= 0, got {seed}, {shuffle_buffer}")
        self.source = os.fspath(source)
        table = shard_table(source, cache_dir)
        if table.n_samples == 0:
            raise DataSourceError(f"data.source {printable_path(self.source)}: its {len(table.files)} shard(s) hold "
                                  "no samples")
        self.files = [str(f) for f in table.files]
        self.counts = table.counts
        self.content = table.content
        self.kind = "wave" if table.content == "audio" else "logmel"
        self.frontend_config, self.stats = table.frontend_config, table.stats
        self.crop_samples, self.crop_frames = int(crop_sec * sample_rate), int(crop_frames)
        self.sample_rate, self.n_mels, self.seed = int(sample_rate), n_mels, int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.batch_size, self.rank, self.world_size, self.n_streams = 2, 0, 1, 1
        # (epoch, start batch) in shared memory, so set_epoch also reaches persistent DataLoader workers.
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.n_bad_seen = 0

    def __len__(self) -> int:
        """Samples in all shards."""
        return sum(self.counts)

    def configure(self, batch_size: int, rank: int = 0, world_size: int = 1, n_streams: int = 1) -> None:
        """Batch size per rank, this rank, the world size, and the streams (= DataLoader workers, at least 1)."""
        if batch_size < 1 or not 0 <= rank < world_size or n_streams < 1:
            raise ValueError(f"bad plan: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                             f"n_streams={n_streams}")
        self.batch_size, self.rank, self.world_size, self.n_streams = batch_size, rank, world_size, n_streams

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank takes per epoch (every rank the same)."""
        return batches_per_epoch(len(self), self.batch_size, self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Give `epoch`'s batches from batch `start_batch` on (the sampler's role for a map-style dataset)."""
        if epoch < 0 or not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"epoch must be >= 0 and start_batch in [0, {self.batches_per_epoch}], "
                             f"got {epoch}, {start_batch}")
        self._position[0], self._position[1] = int(epoch), int(start_batch)

    @property
    def epoch(self) -> int:
        """The epoch iterating gives."""
        return int(self._position[0])

    @property
    def start_batch(self) -> int:
        """The batch of the epoch iterating starts at."""
        return int(self._position[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, int]]:
        epoch, s, n = self.epoch, self.start_batch, self.n_streams
        plan = plan_epoch(self.counts, self.seed, epoch, self.batch_size, self.rank, self.world_size, n)
        worker = get_worker_info()
        if worker is None:  # every stream here, in the order the DataLoader's workers would give them
            yield from _round_robin([self._stream(c, plan[c], _consumed(s, c, n), epoch) for c in _rotated(s, n)])
            return
        if worker.num_workers != n:
            raise RuntimeError(f"WebDatasetShards was configured for {n} streams, the DataLoader has "
                               f"{worker.num_workers} workers")
        # Worker w serves stream (w + s) % n: the DataLoader asks worker 0 first, and batch s is that stream's.
        c = (worker.id + s) % n
        yield from self._stream(c, plan[c], _consumed(s, c, n), epoch)

    def first_items(self, n_items: int) -> Iterator[torch.Tensor | None]:
        """Items (S,) or (1, n_mels, T) of epoch 0 as one rank with one stream would read them (statistics)."""
        plan = plan_epoch(self.counts, self.seed, 0, 1, n_streams=1)[0]
        for i, raw in enumerate(self._raw(plan)):
            if i >= n_items:
                return
            yield self._decode(raw, 0)

    def _stream(self, c: int, slices: list[ShardSlice], skip: int,
                epoch: int) -> Iterator[tuple[torch.Tensor | None, int]]:
        """Stream c's batches after its first `skip`: shuffled slots, decoded only for the batches given."""
        from webdataset.filters import shuffle

        raw = iter(self._raw(slices))
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{self.world_size}:{c}")
            raw = iter(shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw))
        b = 0
        while True:
            slots = [slot for _, slot in zip(range(self.batch_size), raw)]
            if len(slots) < self.batch_size:
                return
            if b >= skip:
                yield collate_skipping([self._decode(slot, epoch) for slot in slots])
            b += 1

    def _raw(self, slices: list[ShardSlice]) -> Iterator[_Raw]:
        """Every sample slot of `slices` in order: exactly stop - start per slice, whatever the shard holds."""
        for piece in slices:
            path = self.files[piece.shard]
            j = piece.start
            try:
                for index, key, members in _samples(path, self.content):
                    if index < piece.start:
                        continue
                    if index >= piece.stop:
                        break
                    yield self._slot(piece.shard, index, f"{path}:{key}", members)
                    j = index + 1
                reason = f"the shard ends after {j} samples, its count says {self.counts[piece.shard]}"
            except (OSError, tarfile.TarError, EOFError, ValueError) as e:
                reason = f"the shard cannot be read past sample {j} ({type(e).__name__}: {e})"
            if j < piece.stop:
                if report_bad_file(f"{path}#{j}", reason):
                    log.warning("%s: %d sample(s) of this epoch are lost: %s", printable_path(path), piece.stop - j,
                                reason)
                for index in range(j, piece.stop):
                    yield _Raw((piece.shard << 32) | index, f"{path}#{index}", error=reason)

    def _slot(self, shard: int, index: int, name: str, members: dict[str, bytes]) -> _Raw:
        item = (shard << 32) | index
        for ext, data in members.items():
            if content_of(ext) == self.content:
                return _Raw(item, f"{name}.{ext}", ext, data)
        return _Raw(item, name, error=f"no {'audio' if self.content == 'audio' else '.' + LOGMEL_MEMBER} member "
                                       f"(members: {', '.join(members) or 'none'})")

    def _decode(self, raw: _Raw, epoch: int) -> torch.Tensor | None:
        """The crop of one slot, or None after reporting why it is bad."""
        try:
            if raw.error:
                raise AudioError(raw.name, raw.error)
            return self._audio_crop(raw, epoch) if self.content == "audio" else self._logmel_crop(raw, epoch)
        except AudioError as e:
            self.n_bad_seen += 1
            report_bad_file(e.path, e.reason)
            return None

    def _audio_crop(self, raw: _Raw, epoch: int) -> torch.Tensor:
        info = audio_bytes_info(raw.data, raw.name)
        length = resampled_length(info.frames, info.sample_rate, self.sample_rate)
        offset = crop_offset(self.seed, epoch, raw.item, length - self.crop_samples)

        def load(start: float, duration: float | None) -> torch.Tensor:
            return decode_audio(raw.data, raw.name, self.sample_rate, start, duration, info=info)

        return read_crop(load, info.frames, info.sample_rate, self.sample_rate, self.crop_samples, offset)

    def _logmel_crop(self, raw: _Raw, epoch: int) -> torch.Tensor:
        lm = npy_view(raw.data, raw.name)
        if lm.ndim != 2 or lm.shape[0] < 1 or (self.n_mels is not None and lm.shape[1] != self.n_mels):
            want = f"(frames, {self.n_mels})" if self.n_mels is not None else "(frames, n_mels)"
            raise AudioError(raw.name, f"log-mel of shape {lm.shape}, expected {want}")
        if lm.dtype.kind != "f":
            raise AudioError(raw.name, f"log-mel of dtype {lm.dtype}, expected float16 or float32")
        n = lm.shape[0]
        crop = logmel_crop(lm, self.crop_frames, crop_offset(self.seed, epoch, raw.item, n - self.crop_frames))
        if not torch.isfinite(crop).all():  # only the frames used are checked (and converted)
            raise AudioError(raw.name, "log-mel with NaN/Inf values")
        return crop

    def __repr__(self) -> str:
        return (f"WebDatasetShards({self.source!r}, shards={len(self.files)}, samples={len(self)}, "
                f"content={self.content}, seed={self.seed}, shuffle_buffer={self.shuffle_buffer})")


def npy_view(data: bytes, name: str) -> np.ndarray:
    """The array of a .npy file held in memory, as a read-only view of `data` (no copy, never unpickled)."""
    fmt = np.lib.format
    buffer = io.BytesIO(data)
    try:
        major, _ = fmt.read_magic(buffer)
        read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(buffer)
        if dtype.hasobject:
            raise ValueError("holds Python objects")
        array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=buffer.tell())
    except (ValueError, OSError, EOFError) as e:
        raise AudioError(name, f"not a .npy array ({e})") from None
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _samples(path: str, content: str) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(index, key, {extension: data}) of each sample of a tar shard, streamed in tar order.

    Only the data of a sample's first `content` member is read; other members map to b"".
    """
    # Random-access mode on the local file: tarfile's stream mode copies its buffer on every small read.
    with tarfile.open(path, mode="r:*") as tar:
        index, key, members = -1, None, {}
        for member in tar:
            split = sample_key(member.name) if member.isreg() else None
            if split is None:
                continue
            if split[0] != key:
                if key is not None:
                    yield index, key, members
                index, key, members = index + 1, split[0], {}
            if content_of(split[1]) == content and not any(content_of(e) == content for e in members):
                members[split[1]] = tar.extractfile(member).read()
            else:
                members.setdefault(split[1], b"")
            tar.members = []  # the members met so far are not needed again: keep memory flat
        if key is not None:
            yield index, key, members


def _consumed(start_batch: int, stream: int, n_streams: int) -> int:
    """Batches of `stream` among the first `start_batch` batches of a rank (the streams take turns)."""
    return max(0, (start_batch - stream + n_streams - 1) // n_streams)


def _rotated(start_batch: int, n_streams: int) -> list[int]:
    return [(w + start_batch) % n_streams for w in range(n_streams)]


def _round_robin(streams: list[Iterator]) -> Iterator:
    """One item of each stream in turn, dropping streams as they end (the DataLoader's order)."""
    live = list(streams)
    while live:
        for stream in list(live):
            try:
                yield next(stream)
            except StopIteration:
                live.remove(stream)
