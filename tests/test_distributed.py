"""Data-parallel training on real processes: 2 workers joined by a gloo process group on CPU.

One spawn runs the LoRA and the dynamic LoRA run (spawning costs more than the tiny runs
themselves); every process notes a fingerprint of its trainable tensors and ranks after each
optimizer step, so "identical after every reallocation" is checked step by step. The
kill-and-resume test kills rank 0 with SIGKILL right after a checkpoint and resumes through
`torchrun -m dynalora train --resume`, the command line a user types.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_helpers import launch_environment, spawn, torchrun_command
from torch.multiprocessing import ProcessExitedException
from training_helpers import (
    TINY_SETTINGS,
    assert_same_tensors,
    read_log,
    saved_tensors,
    without_clock,
)

from dynalora.distributed import rank_digest
from dynalora.training import TrainConfig, train
from dynalora.training.checkpoint import latest_checkpoint

# reallocating at steps 5, 8, 11, ... of the 36-step run; dropout on, so each process's
# random streams differ and fresh adapter rows must be made the same everywhere (drawn from
# the step's generator, then turned by the gradient that every process reduces alike)
DYNAMIC = {"method": "dynamic", "method_options": {"t_warmup": 2, "delta_t": 3, "t_final": 30, "stats_every": 2,
                                                   "grow_init": "gradient"},
           "dropout": 0.1, "head_dropout": 0.1, "checkpoint_every": 4}
# rank_rule="target" decides from the probes' gradients, reduced alike in every process
TARGET = {**DYNAMIC, "method_options": {**DYNAMIC["method_options"], "rank_rule": "target"}}
# a batch of 7 leaves a last batch of 5 (3 + 2 rows), and accumulation spans two of them
LORA = {"method": "lora", "batch_size": 7, "grad_accum": 2}


def fields(model: Path, data: Path, output: Path, **extra: Any) -> dict[str, Any]:
    return {**TINY_SETTINGS, "model": str(model), "data_dir": str(data), "output": str(output), **extra}


@pytest.fixture(scope="module")
def two_process_runs(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    jobs = [{"name": "lora", "config": fields(tiny_model_dir, tiny_glue_dir, root / "lora", **LORA)},
            {"name": "dynamic", "config": fields(tiny_model_dir, tiny_glue_dir, root / "dynamic", **DYNAMIC)},
            {"name": "target", "config": fields(tiny_model_dir, tiny_glue_dir, root / "target", **TARGET)}]
    spawn(jobs, root)
    return root


def per_step(root: Path, name: str) -> list[list[dict[str, Any]]]:
    return [json.loads((root / f"{name}-rank{rank}.json").read_text()) for rank in range(2)]


def test_two_process_lora_matches_one_process_with_the_same_global_batch(
        two_process_runs: Path, tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path: Path) -> None:
    single = train(TrainConfig(**fields(tiny_model_dir, tiny_glue_dir, tmp_path / "single", **LORA)))
    double = json.loads((two_process_runs / "lora" / "metrics.json").read_text())

    assert double["world_size"] == 2 and single["world_size"] == 1
    assert double["steps"] == single["steps"] == 21  # ceil(ceil(96 / 7) / 2) * 3: the global batch is 7
    assert double["rank_digests"][0] == double["rank_digests"][1]
    mine, theirs = saved_tensors(two_process_runs / "lora"), saved_tensors(tmp_path / "single")
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # the logged loss is the global batch's loss, not one shard's
    losses = [[r["loss"] for r in read_log(run) if r["kind"] == "train"]
              for run in (two_process_runs / "lora", tmp_path / "single")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert double["metrics"] == pytest.approx(single["metrics"], abs=1e-6)
    steps = per_step(two_process_runs, "lora")
    assert steps[0] == steps[1] and len(steps[0]) == 21


@pytest.mark.parametrize("name", ["dynamic", "target"])
def test_two_process_dynamic_lora_stays_identical_through_reallocations(two_process_runs: Path, name: str) -> None:
    steps = per_step(two_process_runs, name)
    assert len(steps[0]) == 36
    assert steps[0] == steps[1]  # same tensors (bit for bit) and ranks after every step
    assert len({s["ranks"] for s in steps[0]}) > 2  # the ranks did change, several times
    history = json.loads((two_process_runs / name / "allocation.json").read_text())
    assert any(record["changed"] for record in history)
    metrics = json.loads((two_process_runs / name / "metrics.json").read_text())
    final = history[-1]["ranks"]
    assert metrics["world_size"] == 2
    assert metrics["rank_digests"] == [rank_digest(final)] * 2
    # the checkpoint written by rank 0 holds the controller state every process shares
    assert latest_checkpoint(two_process_runs / name / "checkpoints").progress["world_size"] == 2


def test_killed_two_process_run_resumes_under_torchrun(two_process_runs: Path, tiny_model_dir: Path,
                                                      tiny_glue_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    config = fields(tiny_model_dir, tiny_glue_dir, out, **DYNAMIC)
    with pytest.raises(ProcessExitedException, match="SIGKILL"):
        spawn([{"name": "killed", "config": config, "kill_at": 18}], tmp_path)
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint is not None and checkpoint.progress["step"] == 16
    assert not (out / "metrics.json").exists()

    done = subprocess.run(torchrun_command({**config, "resume": True}), env=launch_environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    straight = two_process_runs / "dynamic"
    assert_same_tensors(saved_tensors(out), saved_tensors(straight))
    final = [latest_checkpoint(run / "checkpoints") for run in (out, straight)]
    assert_same_tensors(final[0].model, final[1].model)
    assert without_clock(read_log(out)) == without_clock(read_log(straight))
    assert json.loads((out / "allocation.json").read_text()) == json.loads((straight / "allocation.json").read_text())
    resumed = json.loads(done.stdout)
    assert resumed["world_size"] == 2 and resumed["rank_digests"][0] == resumed["rank_digests"][1]
