"""Fine-tuning end to end through `train` / `evaluate`: a tiny BERT on a tiny SST-2-style task.

Each run takes about a second: 96 training sentences, 48 dev sentences, a 2-layer 32-wide
BERT (see tests/training_helpers.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from training_helpers import (
    StopAfter,
    assert_same_tensors,
    majority_share,
    make_csv_pair,
    make_regression_csv,
    read_log,
    saved_tensors,
    tiny_config,
    without_clock,
    without_wall_time,
)

from dynalora.adapters.config import ConfigError
from dynalora.data import BucketBatcher
from dynalora.training import TrainConfig, TrainingDiverged, evaluate, load_trained, train
from dynalora.training import run as training_run
from dynalora.training.api import read_run
from dynalora.training.checkpoint import latest_checkpoint
from dynalora.training.loop import TrainingLoop
from dynalora.training.optim import linear_schedule

ALL_METHODS = ("lora", "dynamic", "rank1", "full", "head", "adapter", "bitfit")
# Dynamic LoRA reallocating at steps 5, 8, 11, ... of a 36-step run (defaults would start at 4).
DYNAMIC_OPTIONS = {"t_warmup": 2, "delta_t": 3, "t_final": 30, "stats_every": 2}


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One LoRA run (3 epochs) shared by the tests that only read its folder."""
    out = tmp_path_factory.mktemp("lora_run")
    config = tiny_config(tiny_model_dir, tiny_glue_dir, out)
    return out, config, train(config)


# -- one run: files, log, learning ----------------------------------------------------------------
def test_train_writes_adapter_metrics_log_and_curves(lora_run) -> None:
    out, _, metrics = lora_run
    for name in ("best/dynalora_config.json", "best/dynalora_adapter.safetensors", "best/dynalora_run.json",
                 "metrics.json", "log.jsonl", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == metrics["total_steps"] == 3 * 12  # 96 examples / batch 8, 3 epochs
    assert not metrics["stopped_early"]
    assert 0 < metrics["trainable_params"] < metrics["total_params"]


def test_log_has_every_step_with_its_loss_and_lr_and_every_evaluation(lora_run) -> None:
    out, config, metrics = lora_run
    records = read_log(out)
    steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == list(range(1, metrics["steps"] + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    # the lr logged with a step is the one that step used: warm-up then linear decay, never 0
    factor = linear_schedule(round(config.warmup_ratio * metrics["total_steps"]), metrics["total_steps"])
    assert [r["lr"] for r in steps] == pytest.approx([config.lr * factor(s - 1) for s in range(1, metrics["steps"] + 1)])
    assert min(r["lr"] for r in steps) > 0
    assert [r["step"] for r in evals] == [12, 24, 36]  # after every epoch
    assert max(evals, key=lambda r: r["metrics"]["main"])["metrics"] == metrics["metrics"]
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_tiny_task_is_learned_well_above_the_majority_class(lora_run, tiny_glue_dir: Path) -> None:
    _, _, metrics = lora_run
    majority = majority_share(tiny_glue_dir / "SST-2" / "dev.tsv")
    assert metrics["n_examples"] == 48
    assert metrics["metrics"]["accuracy"] >= majority + 0.25, (metrics["metrics"], majority)


def test_evaluate_reproduces_metrics_json_exactly(lora_run) -> None:
    out, _, _ = lora_run
    saved = json.loads((out / "metrics.json").read_text())
    result = evaluate(out)
    assert result["metrics"] == saved["metrics"]
    assert result["n_examples"] == saved["n_examples"]
    assert (result["task"], result["split"]) == ("sst2", "dev")


# -- kill and resume --------------------------------------------------------------------------------
# AdaLoRA's 36-step schedules put the step-16 checkpoint past the final allocation (step 16),
# or in the middle of budgeting (steps 3-28), where its sensitivity averages decide what follows.
ADALORA_FINAL, ADALORA_BUDGETING = {"tinit": 2, "tfinal": 20, "deltaT": 2}, {"tinit": 2, "tfinal": 8, "deltaT": 2}


@pytest.mark.parametrize(("method", "options"), [
    ("lora", {}), ("dynamic", DYNAMIC_OPTIONS),
    ("peft-adalora", ADALORA_FINAL), ("peft-adalora", ADALORA_BUDGETING)],
    ids=["lora", "dynamic", "adalora-final", "adalora-budgeting"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(method: str, options: dict, tiny_model_dir: Path,
                                                             tiny_glue_dir: Path, tmp_path: Path) -> None:

    def config(out: Path, **extra) -> TrainConfig:
        # dropout on: the resumed run must also restore the random generators' states
        return tiny_config(tiny_model_dir, tiny_glue_dir, out, method=method, method_options=options,
                           checkpoint_every=4, head_dropout=0.1, dropout=0.1, **extra)

    straight = train(config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "resumed"), callbacks=[StopAfter(18)])
    checkpoint = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert checkpoint is not None and checkpoint.progress["step"] == 16  # mid-epoch 2
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = train(config(tmp_path / "resumed", resume=True))

    assert without_wall_time(resumed) == without_wall_time(straight)
    assert_same_tensors(saved_tensors(tmp_path / "resumed"), saved_tensors(tmp_path / "straight"))
    final = [latest_checkpoint(tmp_path / run / "checkpoints") for run in ("straight", "resumed")]
    assert final[0].progress["step"] == final[1].progress["step"] == 36
    assert_same_tensors(final[0].model, final[1].model)  # the last step's weights, not only the best
    # every field of every record but the wall-clock ones (timestamp, throughput)
    assert without_clock(read_log(tmp_path / "resumed")) == without_clock(read_log(tmp_path / "straight"))
    if method == "dynamic":  # the checkpoint had to carry reallocated ranks and the controller's state
        history = json.loads((tmp_path / "straight" / "allocation.json").read_text())
        ranks = {r["step"]: sorted(r["ranks"].values()) for r in history}
        assert any(step < 16 and ranks[step] != [8, 8, 8, 8] for step in ranks)
        assert any(step > 16 and ranks[step] != ranks[max(s for s in ranks if s < 16)] for step in ranks)
        assert json.loads((tmp_path / "resumed" / "allocation.json").read_text()) == history
    if method == "peft-adalora":  # the same masks, chosen at the same steps
        history = json.loads((tmp_path / "straight" / "adalora_ranks.json").read_text())["history"]
        assert len(history) > 1
        assert json.loads((tmp_path / "resumed" / "adalora_ranks.json").read_text())["history"] == history


def test_resume_with_other_settings_is_refused(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1, checkpoint_every=2),
              callbacks=[StopAfter(3)])
    with pytest.raises(ConfigError, match=r"resume: .*rank=8 -> 4"):
        train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1, checkpoint_every=2, rank=4,
                          resume=True))


# -- divergence ---------------------------------------------------------------------------------------
def poisoning_trainer(at_step: int) -> type[TrainingLoop]:
    """The loop, but every trainable tensor turns NaN right after optimizer step `at_step`."""

    class PoisoningTrainer(TrainingLoop):
        def optimizer_step(self) -> None:
            super().optimizer_step()
            if self.state["step"] == at_step:
                with torch.no_grad():
                    for p in self.model.parameters():
                        if p.requires_grad:
                            p.fill_(math.nan)

    return PoisoningTrainer


@pytest.mark.parametrize(("poisoned_at", "reported"), [
    (5, r"at step 6: the loss is nan"),  # found by the next step's loss
    (4, r"at step 4: the weights of .*lora_A are not finite"),  # a step that evaluates and checkpoints: found before saving
])
def test_nan_stops_the_run_and_keeps_the_last_good_model(poisoned_at: int, reported: str, tiny_model_dir: Path,
                                                         tiny_glue_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training_run, "TrainingLoop", poisoning_trainer(poisoned_at))
    config = tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1, eval_every=2, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=reported) as caught:
        train(config)
    monkeypatch.undo()

    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    last_good = 4 if poisoned_at == 5 else 2
    assert checkpoint.progress["step"] == last_good
    assert f"step-{last_good:08d}" in str(caught.value)
    assert all(torch.isfinite(t).all() for t in checkpoint.model.values())
    model, _, _ = load_trained(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    best = read_run(tmp_path)["best"]
    assert best["step"] <= last_good
    assert evaluate(tmp_path)["metrics"] == best["metrics"]  # the best model on disk is the one recorded


# -- accumulation, evaluation schedule, early stopping --------------------------------------------------
def test_accumulating_two_batches_of_4_equals_one_batch_of_8(tiny_model_dir: Path, tiny_glue_dir: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop promises: micro-batch losses divided by the group size, one optimizer step per
    # group. Batch composition is the batcher's business (bucketing differs with the batch
    # size), so batches are taken in file order here: batch k of 8 = micro-batches 2k, 2k+1.
    def in_file_order(features, batch_size, shuffle, **kw):
        return BucketBatcher(features, batch_size, shuffle=False, **kw)

    monkeypatch.setattr(training_run, "BucketBatcher", in_file_order)
    runs = {}
    for name, batch_size, accum in (("4x2", 4, 2), ("8x1", 8, 1), ("4x1", 4, 1)):
        runs[name] = train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path / name, epochs=1,
                                       batch_size=batch_size, grad_accum=accum))
    assert runs["4x2"]["steps"] == runs["8x1"]["steps"] == 12
    accumulated, whole = saved_tensors(tmp_path / "4x2"), saved_tensors(tmp_path / "8x1")
    for key in whole:
        torch.testing.assert_close(accumulated[key], whole[key], rtol=1e-4, atol=1e-6)
    losses = [[r["loss"] for r in read_log(tmp_path / n) if r["kind"] == "train"] for n in ("4x2", "8x1")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # the comparison has power: without accumulation (twice the steps) the weights differ
    single = saved_tensors(tmp_path / "4x1")
    assert any(not torch.allclose(single[k], whole[k], atol=1e-3) for k in whole if "lora_B" in k)


def test_eval_every_evaluates_every_n_steps_and_at_the_end(tiny_model_dir: Path, tiny_glue_dir: Path,
                                                           tmp_path: Path) -> None:
    metrics = train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1, eval_every=5))
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "eval"] == [5, 10, 12]
    assert metrics["best_step"] in (5, 10, 12)


def test_early_stopping_stops_before_the_last_step(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path: Path) -> None:
    # a learning rate too small to change any prediction: every evaluation after the first is no better
    metrics = train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, lr=1e-9, head_lr=1e-9, eval_every=2,
                                early_stopping_patience=2))
    assert metrics["stopped_early"]
    assert metrics["steps"] == 6 < metrics["total_steps"] == 36
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "eval"] == [2, 4, 6]
    assert metrics["best_step"] == 2
    assert evaluate(tmp_path)["metrics"] == metrics["metrics"]


def test_patience_running_out_at_the_last_evaluation_is_not_an_early_stop(
        tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path: Path) -> None:
    # evaluations at steps 5, 10, 12 (the end): the second bad one is the run's last
    metrics = train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, epochs=1, lr=1e-9, head_lr=1e-9,
                                eval_every=5, early_stopping_patience=2))
    assert metrics["steps"] == metrics["total_steps"] == 12
    assert metrics["best_step"] == 5 and not metrics["stopped_early"]


# -- every method ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_trains_and_evaluate_reproduces_it(method: str, tiny_model_dir: Path, tiny_glue_dir: Path,
                                                        tmp_path: Path) -> None:
    options = DYNAMIC_OPTIONS if method == "dynamic" else {}
    metrics = train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, method=method, epochs=1, lr=None,
                                method_options=options))
    assert metrics["method"] == method and metrics["steps"] == 12
    assert evaluate(tmp_path)["metrics"] == metrics["metrics"]
    lora_family = method in ("lora", "dynamic", "rank1")
    assert (tmp_path / "best" / "dynalora_config.json").is_file() == lora_family
    assert (tmp_path / "best" / "trained_state.safetensors").is_file() == (not lora_family)
    head = 32 * 2 + 2
    if method == "head":
        assert metrics["trainable_params"] == head
    elif method == "full":
        assert metrics["trainable_params"] == metrics["total_params"]
    else:
        assert head < metrics["trainable_params"] < metrics["total_params"]
    if method in ("dynamic", "rank1"):
        assert (tmp_path / "allocation.json").is_file() and (tmp_path / "allocation.png").is_file()
        assert metrics["allocation"]["method"] == method and "ranks_by_type" in metrics["allocation"]


# -- own data -------------------------------------------------------------------------------------------
def test_own_csv_files_train_and_evaluate(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_file, dev_file = make_csv_pair(tmp_path / "data")
    config = tiny_config(tiny_model_dir, None, tmp_path / "run", task="verdicts", train_file=str(train_file),
                         dev_file=str(dev_file), text_columns=["text"], label_column="verdict")
    metrics = train(config)
    assert metrics["task"] == "verdicts" and metrics["n_examples"] == 48
    assert read_run(tmp_path / "run")["metadata"]["labels"] == ["neg", "pos"]
    assert metrics["metrics"]["accuracy"] >= majority_share(dev_file) + 0.15
    assert evaluate(tmp_path / "run")["metrics"] == metrics["metrics"]


def test_regression_on_own_pairs_reports_correlations(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_file, dev_file = make_regression_csv(tmp_path / "data")
    config = tiny_config(tiny_model_dir, None, tmp_path / "run", task="similarity", train_file=str(train_file),
                         dev_file=str(dev_file), text_columns=["first", "second"], label_column="score",
                         regression=True)
    metrics = train(config)
    scores = metrics["metrics"]
    assert {"pearson", "spearman", "mse"} <= set(scores)
    assert scores["main"] == scores["pearson"] and math.isfinite(scores["pearson"])
    assert scores["pearson"] > 0.3  # the score follows the sentiment words
    assert read_run(tmp_path / "run")["metadata"]["num_labels"] == 1
    assert evaluate(tmp_path / "run")["metrics"] == scores


# -- configuration errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "named"), [
    ({"lr": -1.0}, r"^lr=-1.0: must be > 0"),
    ({"grad_accum": 0}, r"^grad_accum=0: must be a positive integer"),
    ({"method": "lorax"}, r"^method='lorax': must be one of"),
    ({"epochs": 0}, r"^epochs=0: must be > 0"),
    ({"train_file": "x.csv", "text_columns": ["text"]}, r"^dev_file=None: is needed with train_file"),
])
def test_config_errors_name_the_field(settings: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        TrainConfig(**settings)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("task: sst2\nlearning_rte: 0.1\n")  # a typo (learning_rate itself is an alias of lr)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['learning_rte'\]"):
        TrainConfig.from_yaml(path)
    path.write_text("task: sst2\nmax-length: 64\n")  # written as the flag: accepted
    assert TrainConfig.from_yaml(path, rank=4).max_length == 64
