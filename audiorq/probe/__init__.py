"""Linear-probe evaluation (docs/protocol.md): one module per stage.

encoders   load_encoder: audiorq checkpoint / exported or BYOL-A state dict / random / logmel baselines
presets    the byola / evar protocol settings (ProbeConfig)
embed      a task's norm stats, frozen-encoder embeddings with an on-disk cache
classifier StandardScaler + linear layer (Adam, early stopping), several seeds batched together
report     scores.csv rows, summaries, the markdown table beside the paper's Table 9
run        linear_probe / probe_tasks: the whole pipeline

The task checks and subsets the probe applies (check_task, subsample_task) live with the Task record in
`audiorq.data.tasks`; they are re-exported here for callers of the probe.
"""

from audiorq.data.tasks import check_task, subsample_task
from audiorq.probe.classifier import ClassifierRun, StandardScaler, carve_validation, train_linear_classifier
from audiorq.probe.embed import ProbeError, TaskEmbeddings, embed_task, task_norm_stats
from audiorq.probe.encoders import EncoderError, EncoderInfo, LogMelStats, load_encoder
from audiorq.probe.presets import PRESETS, ProbeConfig, probe_config
from audiorq.probe.report import PAPER_TABLE9, format_table, read_scores, summarize, write_results
from audiorq import _make_callable
from audiorq.probe.run import ProbeResult, linear_probe, parse_task_data, probe_tasks

__all__ = [
    "PAPER_TABLE9", "PRESETS", "ClassifierRun", "EncoderError", "EncoderInfo", "LogMelStats", "ProbeConfig",
    "ProbeError", "ProbeResult", "StandardScaler", "TaskEmbeddings", "carve_validation", "check_task",
    "embed_task", "format_table", "linear_probe", "load_encoder", "parse_task_data",
    "probe_config", "probe_tasks", "read_scores", "subsample_task", "summarize", "task_norm_stats",
    "train_linear_classifier", "write_results",
]

# `audiorq.probe(encoder, tasks, data, ...)` is `probe_tasks`; the package stays importable as before.
_make_callable(__name__, probe_tasks)
