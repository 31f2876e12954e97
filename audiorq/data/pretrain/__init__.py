"""Pretraining data: audio folders (audio_folder.py), log-mel shards (logmel_shards.py) and WebDataset tar
shards (webdataset_shards.py; each module the one reader and writer of its format) as datasets of random
crops, the resumable sampler and collate (sampler.py), dataset statistics."""

from audiorq.data.pretrain.audio_folder import AudioFolder, EpochCropDataset, StringTable, crop_offset, is_logmel_shards
from audiorq.data.pretrain.scan import (
    AUDIO_EXTENSIONS, AudioScan, DataSourceError, MissingSourceError, ScanEntry, default_cache_dir, list_audio_files,
    name_problem, scan_audio,
)
from audiorq.data.pretrain.logmel_shards import SILENCE_LOG_MEL, LogMelShards
from audiorq.data.pretrain.sampler import ResumableSampler, collate_skipping
from audiorq.data.pretrain.stats import compute_norm_stats
from audiorq.data.pretrain.webdataset_shards import WebDatasetShards, is_webdataset_source

__all__ = [
    "AUDIO_EXTENSIONS", "SILENCE_LOG_MEL", "AudioFolder", "AudioScan", "DataSourceError", "EpochCropDataset",
    "LogMelShards", "MissingSourceError", "ResumableSampler", "ScanEntry", "StringTable", "collate_skipping",
    "WebDatasetShards", "compute_norm_stats", "crop_offset", "default_cache_dir", "is_logmel_shards",
    "is_webdataset_source", "list_audio_files", "name_problem", "scan_audio",
]
