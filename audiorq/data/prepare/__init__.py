"""One-time preparation: 16 kHz mono wav copies of a corpus (wav.py), its float16 log-mel shards (logmel.py),
its WebDataset tar shards (webdataset.py) and 16 kHz copies of a downstream task's download (task.py), all run
by the one job runner (runner.py)."""

from audiorq.data.prepare.logmel import DEFAULT_SHARD_SIZE_FRAMES, logmel_frames, plan_shards, prepare_logmel
from audiorq.data.prepare.runner import START_METHOD, PrepareSummary, run_jobs
from audiorq.data.prepare.task import PrepareReport, prepare_task
from audiorq.data.prepare.wav import convert_file, prepare_wav
from audiorq.data.prepare.webdataset import DEFAULT_CLIPS_PER_SHARD, plan_webdataset, prepare_webdataset

__all__ = [
    "DEFAULT_CLIPS_PER_SHARD", "DEFAULT_SHARD_SIZE_FRAMES", "START_METHOD", "PrepareReport", "PrepareSummary",
    "convert_file", "logmel_frames", "plan_shards", "plan_webdataset", "prepare_logmel", "prepare_task",
    "prepare_wav", "prepare_webdataset", "run_jobs",
]
