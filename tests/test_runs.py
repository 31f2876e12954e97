"""The run folder: weights-only loading refuses crafted files without running them; old runs keep loading."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from audiorq.cli import main
from audiorq.probe.encoders import EncoderError, load_encoder, state_dict_hash
from audiorq.runs import (
    CHECKPOINT_FILE, ENCODER_FILE, RunFileError, RunFolder, load_checkpoint, load_weights_only, read_encoder_file,
    save_encoder,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_v0_1"


class RunsCode:
    """Unpickling this calls os.system: what an attacker would put in a shared checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_files(tmp_path: Path) -> dict[str, Path]:
    """Every way a user could be handed code disguised as a model; each would run `touch` if unpickled."""
    marker = tmp_path / "code_ran"
    evil = RunsCode(marker)
    files = {}
    files["checkpoint"] = tmp_path / "ckpt" / CHECKPOINT_FILE
    files["checkpoint"].parent.mkdir()
    torch.save({"encoder": {"fc.0.weight": torch.zeros(2, 8)}, "learner": {}, "config": evil}, files["checkpoint"])
    files["encoder"] = tmp_path / "enc" / ENCODER_FILE
    files["encoder"].parent.mkdir()
    torch.save({"fc.0.weight": torch.zeros(2, 8), "payload": evil}, files["encoder"])
    files["run_folder"] = tmp_path / "run"
    files["run_folder"].mkdir()
    torch.save({"encoder": evil, "learner": {}}, files["run_folder"] / CHECKPOINT_FILE)
    files["plain_pickle"] = tmp_path / "model.pth"
    files["plain_pickle"].write_bytes(pickle.dumps(evil))
    return files


@pytest.mark.parametrize("kind", ["checkpoint", "encoder", "run_folder", "plain_pickle"])
def test_crafted_files_are_refused_and_nothing_runs(tmp_path, kind):
    path = crafted_files(tmp_path)[kind]
    marker = tmp_path / "code_ran"
    with pytest.raises(EncoderError, match="refused"):
        load_encoder(str(path))
    assert not marker.exists()
    result = CliRunner().invoke(main, ["probe", str(path), "--task", "fsdd_digits", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_is_refused(tmp_path):
    path = crafted_files(tmp_path)["checkpoint"]
    result = CliRunner().invoke(main, [
        "pretrain", "quick", f"out_dir={tmp_path / 'new'}", f"resume={path}", f"data.source={tmp_path}",
        "device=cpu", "log.progress=false",
    ])
    assert result.exit_code == 2 and "refused" in result.output
    assert not (tmp_path / "code_ran").exists()
    with pytest.raises(RunFileError, match="refused"):
        load_checkpoint(path)


def test_not_a_torch_file_is_named(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("hello")
    with pytest.raises(RunFileError, match="notes.pt: cannot read"):
        load_weights_only(junk)
    with pytest.raises(RunFileError, match="no such file"):
        load_weights_only(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunFileError, match="neither checkpoint.pt nor encoder.pth"):
        read_encoder_file(empty)


def test_encoder_round_trip_strips_ddp_prefix(tmp_path):
    state = {"module.fc.0.weight": torch.randn(3, 8), "module.fc.0.bias": torch.randn(3)}
    save_encoder(state, tmp_path / ENCODER_FILE)
    found = read_encoder_file(tmp_path)
    assert found.kind == "state_dict" and found.path == tmp_path / ENCODER_FILE and found.config == {}
    assert set(found.state) == {"fc.0.weight", "fc.0.bias"}
    assert torch.equal(found.state["fc.0.weight"], state["module.fc.0.weight"])


def test_run_folder_written_by_v0_1_still_loads():
    """tests/fixtures/run_v0_1 was written by audiorq 0.1.0 (before the restructuring); see its expected.json."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    ckpt = load_checkpoint(FIXTURE / CHECKPOINT_FILE)
    assert ckpt["format"] == 1 and ckpt["step"] == 2 and ckpt["config"]["frontend"]["n_mels"] == 8
    for spec in (FIXTURE, FIXTURE / CHECKPOINT_FILE, FIXTURE / ENCODER_FILE):
        encoder, info = load_encoder(str(spec))
        assert info.weights_hash == expected["encoder_hash"] and (info.d, info.n_mels) == (32, 8)
        x = -6.0 + 3.0 * torch.randn(2, 1, 8, 96, generator=torch.Generator().manual_seed(123))
        with torch.no_grad():
            emb = encoder(x)
        assert float(emb.double().sum()) == pytest.approx(expected["embedding_sum"], rel=1e-6)
        assert emb[0, :4].tolist() == pytest.approx(expected["embedding_first"], rel=1e-6, abs=1e-7)


def test_resuming_a_v0_1_run_continues_it_exactly(tmp_path):
    """The restructured trainer resumes a 0.1.0 checkpoint and takes the same next step as 0.1.0 did."""
    from test_train import ToyLogMel

    from audiorq.train import load_pretrain_config, pretrain

    class SmallLogMel(ToyLogMel):
        def __getitem__(self, i: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(1000 * self.epoch + i)
            return -6.0 + 3.0 * torch.randn(1, 8, 96, generator=g)

    expected = json.loads((FIXTURE / "expected.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "expected.json").unlink()
    cfg = load_pretrain_config(run / "config.yaml", [f"out_dir={run}", "resume=auto", "max_steps=3", "epochs=2"])
    pretrain(cfg, dataset=SmallLogMel(n=8))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "epoch_end" not in r] == [1, 2, 3]  # the old rows are kept
    assert next(r["loss"] for r in rows if r.get("step") == 3 and "epoch_end" not in r) == expected["resumed_step3_loss"]
    assert state_dict_hash(load_checkpoint(RunFolder(run).checkpoint)["encoder"]) == expected["resumed_encoder_hash"]


def test_random_bytes_are_not_called_pickled(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 250)) * 3)
    with pytest.raises(RunFileError, match="junk.pt: not a torch file"):
        load_weights_only(junk)
