"""`sft` on 2 real processes (gloo on CPU), and the launchers: mpirun's variables, accelerate.

One spawn runs the tiny LLaMA SFT run to the end and then a copy that rank 0 kills with SIGKILL
after a checkpoint. Its processes are described as `accelerate launch --cpu` through mpirun
describes them (Open MPI's variables, no RANK / WORLD_SIZE), so the same run checks that path;
the killed run is resumed with `accelerate launch --multi_gpu --num_processes 2 -m dynalora sft
--resume`, the command a CPU user of accelerate types. The global batch of 5 leaves a last
batch of one row: rank 1's shard of it is empty.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_llama
from distributed_helpers import accelerate_command, launch_environment, spawn
from torch.multiprocessing import ProcessExitedException
from training_helpers import assert_same_tensors, read_log, saved_tensors, without_clock

from dynalora.distributed import launcher_info
from dynalora.distributed.context import join_process_group, single_accelerate_process
from dynalora.llm.sft import SftConfig, train_sft
from dynalora.training.checkpoint import latest_checkpoint

# answers of 1 or 2 digits: shards hold different numbers of response tokens, and the loss
# must weigh them by tokens, not by rows, to equal the one-process run
RECORDS = [{"question": f"{a}x{b}?", "answer": str(a * b)} for a in range(1, 7) for b in range(2, 6)]
TRAIN, HELD_OUT = RECORDS[:16], RECORDS[16:]
STEPS = 6  # 16 records in batches of 5 (5, 5, 5, 1), two per step, 3 epochs
KILL_AT = 3  # the checkpoint of the evaluation at step 2 is the one to resume from


def fields(folder: Path, output: Path, **extra: Any) -> dict[str, Any]:
    # 3 held-out prompts answered at every evaluation (shared out over the processes), the
    # report's 2 samples from the other 5
    return {"data": str(folder / "train.jsonl"), "eval_data": str(folder / "eval.jsonl"), "eval_generation_samples": 3,
            "model": str(folder / "tiny-llama"), "output": str(output), "max_length": 48, "batch_size": 5,
            "grad_accum": 2, "eval_batch_size": 4, "epochs": 3, "lr": 5e-3, "dropout": 0.0, "warmup_ratio": 0.0,
            "seed": 3, "samples": 2, "generation_samples": 2, "max_new_tokens": 6, "progress": False, **extra}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed_sft")
    tiny_llama().save_pretrained(root / "tiny-llama")
    tiny_chat_tokenizer().save_pretrained(root / "tiny-llama")
    for name, records in (("train", TRAIN), ("eval", HELD_OUT)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    jobs = [{"name": "sft", "task": "sft", "config": fields(root, root / "sft")},
            {"name": "killed", "task": "sft", "config": fields(root, root / "killed"), "kill_at": KILL_AT}]
    with pytest.raises(ProcessExitedException, match="SIGKILL"):
        spawn(jobs, root, style="mpirun")
    return root


def test_two_process_sft_matches_one_process_and_only_the_main_process_writes(
        sft_runs: Path, tmp_path: Path) -> None:
    single = train_sft(SftConfig(**fields(sft_runs, tmp_path / "single")))
    run = sft_runs / "sft"
    double = json.loads((run / "metrics.json").read_text())

    assert double["world_size"] == 2 and single["world_size"] == 1
    assert double["steps"] == single["steps"] == STEPS
    mine, theirs = saved_tensors(run), saved_tensors(tmp_path / "single")
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # the logged training loss is the global batch's (token-weighted over the shards); the
    # held-out loss and the answers judged at each evaluation, half by each process, are the
    # whole held-out set's
    losses = [[r["loss"] for r in read_log(folder) if r["kind"] == "train"] for folder in (run, tmp_path / "single")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for key in ("metrics", "initial_metrics"):
        assert double[key] == pytest.approx(single[key], rel=1e-5), key
    assert double["metrics"]["loss"] < double["initial_metrics"]["loss"]
    assert double["metrics"]["generation_n"] == 3

    steps = [json.loads((sft_runs / f"sft-rank{rank}.json").read_text()) for rank in range(2)]
    assert len(steps[0]) == STEPS and steps[0] == steps[1]  # the same tensors, bit for bit, after every step
    assert double["rank_digests"][0] == double["rank_digests"][1]

    # the report is the main process's: written once, with the answers of the trained adapter
    assert len((run / "samples.jsonl").read_text().splitlines()) == 2
    assert (run / "report.md").is_file() and {"before", "after"} <= set(double["generation"])
    writes = [json.loads((sft_runs / f"sft-rank{rank}-writes.json").read_text()) for rank in range(2)]
    assert writes[1] == []  # rank 1 created, renamed or removed nothing in the run folder
    published = {Path(w.split(" ", 1)[1]).name for w in writes[0] if w.startswith("os.rename")}
    assert {"metrics.json", "samples.jsonl", "report.md", "curves.png", "best"} <= published


def test_killed_two_process_sft_resumes_under_accelerate_launch(sft_runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    out = sft_runs / "killed"
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint is not None and checkpoint.progress["step"] == KILL_AT - 1
    assert checkpoint.progress["world_size"] == 2
    assert not (out / "metrics.json").exists()

    command = accelerate_command({**fields(sft_runs, out), "resume": True}, command="sft")
    done = subprocess.run(command, env=launch_environment(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    straight = sft_runs / "sft"
    assert_same_tensors(saved_tensors(out), saved_tensors(straight))
    assert without_clock(read_log(out)) == without_clock(read_log(straight))
    assert (out / "samples.jsonl").read_text() == (straight / "samples.jsonl").read_text()
    resumed = json.loads(done.stdout)  # printed once, by the main process
    assert resumed["world_size"] == 2 and resumed["rank_digests"][0] == resumed["rank_digests"][1]


def accelerate_cpu_environment(*flags: str) -> dict[str, str]:
    """The environment accelerate's single-process ("simple") launcher gives its command."""
    launch = pytest.importorskip("accelerate.commands.launch")
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, _, _ = launch._validate_launch_command(
        launch.launch_command_parser().parse_args([*flags, "-m", "dynalora", "train"]))
    return prepare_simple_launcher_cmd_env(args)[1]


def test_accelerate_cpu_launch_is_one_process_unless_mpirun_starts_more(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no user accelerate config
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    env = accelerate_cpu_environment("--cpu", "--num_processes", "2")
    assert launcher_info(env).world_size == 1 and single_accelerate_process(env)
    # under mpirun (--mpirun_hostfile) the same launcher's processes carry MPI's variables
    mpi = {**env, "PMI_RANK": "1", "PMI_SIZE": "2"}
    assert launcher_info(mpi) == launcher_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not single_accelerate_process(mpi)
    # one process where two were asked for: said once, and the run goes on alone
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.warns(UserWarning, match="accelerate launch started one process"):
        assert join_process_group("cpu").world_size == 1
