"""Scanning a pretraining source: the audio files of a folder (or a file list) and their header info, cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from audiorq.atomic import atomic_write_text
from audiorq.audio import AudioError, audio_info, file_problem, printable_path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SCAN_CACHE_VERSION = 1
log = logging.getLogger(__name__)  # one plain line per problem, not a Python warning echoing source
EMPTY_FILE = "empty file (0 bytes)"  # the one message for a 0-byte file, in every command


class DataSourceError(ValueError):
    """A pretraining source that cannot be used as given (empty, the wrong kind, damaged); names it and the fix."""


class MissingSourceError(DataSourceError, FileNotFoundError):
    """A pretraining source path that does not exist."""


def name_problem(rel: str) -> str:
    """Why a file name cannot be used ("" if it can): path lists, caches and CSVs hold UTF-8 text, one per line."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file)"
    if "\n" in rel or "\r" in rel:
        return "file name contains a line break (rename the file)"
    return ""


# ----------------------------------------------------------------------------------------------
# Scanning: the list of files and their header info, cached.


@dataclass
class ScanEntry:
    """One file of a scan: header info, or the reason it is unusable (`error`, frames 0)."""

    path: str  # as given: relative to the scan root, or absolute
    size: int
    mtime_ns: int
    frames: int
    sample_rate: int
    error: str = ""


@dataclass
class AudioScan:
    """Result of scanning a folder / file list: entries in a deterministic (sorted or listed) order."""

    root: Path  # folder the relative paths are relative to
    entries: list[ScanEntry]
    cache_path: Path | None
    cache_status: str  # "hit" (nothing re-read), "updated" (some headers re-read), "new" (no usable cache)
    n_probed: int  # headers read in this call

    def absolute(self, entry: ScanEntry) -> Path:
        """Absolute path of a scanned entry."""
        return Path(entry.path) if os.path.isabs(entry.path) else self.root / entry.path


def default_cache_dir() -> Path:
    """$AUDIORQ_CACHE_DIR, else ~/.cache/audiorq (a data folder may be read-only, so not next to the data)."""
    env = os.environ.get("AUDIORQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "audiorq"


def is_audio_file(name: str) -> bool:
    """Whether a file name is one the scan takes: an audio extension, not hidden."""
    # Hidden names are skipped too: atomic writes leave ".name.xxx.tmp" files while in progress.
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def list_audio_files(root: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Audio files under `root` (recursive, symlinks followed once), sorted relative paths, and the
    mtime_ns of every folder visited (keyed by relative path; adding/removing a file changes its folder's).

    Folders that cannot be listed are skipped with one warning that counts and names them.
    """
    root = Path(root)
    files: list[str] = []
    dir_mtimes: dict[str, int] = {}
    seen: set[str] = set()
    unreadable: list[str] = []

    def on_error(e: OSError) -> None:
        unreadable.append(f"{printable_path(e.filename or '?')} ({e.strerror or type(e).__name__})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        rel_dir = os.path.relpath(dirpath, root)
        try:
            dir_mtimes[rel_dir] = os.stat(dirpath).st_mtime_ns
        except OSError:
            dir_mtimes[rel_dir] = -1  # vanished while listing: the next scan sees a change
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if is_audio_file(name):
                files.append(os.path.normpath(os.path.join(rel_dir, name)))
    files.sort()
    if unreadable:
        log.warning("%s: skipped %d folder(s) that cannot be listed: %s%s", printable_path(root), len(unreadable),
                    "; ".join(unreadable[:5]), " ..." if len(unreadable) > 5 else "")
    return files, dir_mtimes


def _read_file_list(list_path: Path) -> list[str]:
    paths = []
    for line in list_path.read_text(errors="surrogateescape").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(line)
    return paths


def unusable_reason(error: AudioError) -> str:
    """The one wording of why a file cannot be used: an empty file is called empty, whatever the decoder said."""
    try:
        if os.stat(error.path).st_size == 0:
            return EMPTY_FILE  # soundfile says "Format not recognised" for it, which sends people looking elsewhere
    except OSError:
        pass
    return error.reason


def _probe(root: Path, rel: str) -> ScanEntry:
    path = Path(rel) if os.path.isabs(rel) else root / rel
    problem = name_problem(rel)
    try:
        st = path.stat()
    except OSError:
        return ScanEntry(rel, -1, -1, 0, 0, problem or file_problem(path) or "file not found")
    if problem:
        return ScanEntry(rel, st.st_size, st.st_mtime_ns, 0, 0, problem)
    if st.st_size == 0:
        return ScanEntry(rel, 0, st.st_mtime_ns, 0, 0, EMPTY_FILE)
    try:
        info = audio_info(path)
    except AudioError as e:
        return ScanEntry(rel, st.st_size, st.st_mtime_ns, 0, 0, e.reason)
    error = "" if info.frames > 0 else "empty audio (0 samples)"
    return ScanEntry(rel, st.st_size, st.st_mtime_ns, info.frames, info.sample_rate, error)


def _stat_matches(root: Path, entry: ScanEntry) -> bool:
    path = Path(entry.path) if os.path.isabs(entry.path) else root / entry.path
    try:
        st = path.stat()
    except OSError:
        return entry.size == -1
    return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns


def scan_audio(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> AudioScan:
    """Scan a folder (recursive) or a text file list (one path per line, relative to the list's folder).

    Headers are read with soundfile (no decoding). The result is cached in `cache_dir` under a name derived
    from the source's absolute path. The cache is reused as is while every scanned folder (or the list file)
    keeps its mtime; otherwise the tree is listed again and only new or changed files (by size and mtime)
    have their headers re-read. Editing a file in place without touching its folder is not noticed: delete
    the cache file (`AudioScan.cache_path`) then.
    """
    source = Path(source).expanduser().resolve()
    if source.is_dir():
        root, source_kind = source, "dir"
    elif source.is_file():
        root, source_kind = source.parent, "list"
    else:
        raise MissingSourceError(f"audio source not found: {printable_path(source)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha1(os.fsencode(source)).hexdigest()[:16]  # fsencode: a folder name need not be UTF-8
    cache_path = cache_dir / f"scan-{source.name or 'root'}-{key}.json"
    cached = _load_cache(cache_path, source, source_kind)

    if source_kind == "dir":
        fingerprint = None
        if cached is not None and _dirs_unchanged(root, cached["dirs"]):
            return AudioScan(root, cached["entries"], cache_path, "hit", 0)
        paths, fingerprint = list_audio_files(root)
    else:
        st = source.stat()
        fingerprint = {"list": [st.st_size, st.st_mtime_ns]}
        if cached is not None and cached["dirs"] == fingerprint:
            return AudioScan(root, cached["entries"], cache_path, "hit", 0)
        paths = _read_file_list(source)

    old = {e.path: e for e in cached["entries"]} if cached is not None else {}
    entries: list[ScanEntry | None] = []
    to_probe: list[int] = []
    for i, rel in enumerate(paths):
        entry = old.get(rel)
        if entry is not None and _stat_matches(root, entry):
            entries.append(entry)
        else:
            entries.append(None)
            to_probe.append(i)
    if to_probe:
        from tqdm.auto import tqdm

        # soundfile releases the GIL while reading headers, so threads overlap the file system latency.
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            probed = pool.map(lambda i: _probe(root, paths[i]), to_probe, chunksize=64)
            for i, entry in zip(to_probe, tqdm(probed, total=len(to_probe), desc="scan", unit="file",
                                               disable=len(to_probe) < 5000 or None, leave=False)):
                entries[i] = entry
    scan_entries = [e for e in entries if e is not None]
    status = "new" if cached is None else ("updated" if to_probe or len(old) != len(scan_entries) else "hit")
    try:
        _save_cache(cache_path, source, source_kind, fingerprint, scan_entries)
    except OSError as e:
        log.warning("could not write the scan cache %s: %s", printable_path(cache_path), e)
        cache_path = None
    return AudioScan(root, scan_entries, cache_path, status, len(to_probe))


def _dirs_unchanged(root: Path, dirs: dict[str, int]) -> bool:
    for rel, mtime in dirs.items():
        try:
            if os.stat(root / rel).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _load_cache(path: Path, source: Path, source_kind: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != SCAN_CACHE_VERSION or data["source"] != str(source) or data["kind"] != source_kind:
            return None
        cols = data["entries"]
        entries = [
            ScanEntry(p, s, m, f, r, e)
            for p, s, m, f, r, e in zip(
                cols["path"], cols["size"], cols["mtime_ns"], cols["frames"], cols["sample_rate"], cols["error"]
            )
        ]
        return {"dirs": data["dirs"], "entries": entries}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable cache: scan again


def _save_cache(path: Path, source: Path, source_kind: str, dirs: dict, entries: list[ScanEntry]) -> None:
    # Column lists keep the file compact for millions of entries.
    cols = {name: [getattr(e, name) for e in entries] for name in ("path", "size", "mtime_ns", "frames",
                                                                     "sample_rate", "error")}
    data = {"version": SCAN_CACHE_VERSION, "source": str(source), "kind": source_kind, "dirs": dirs, "entries": cols}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))
