"""Fine-tuning the real packaged MiniLM on real GLUE SST-2 slices (about a minute on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import minilm_path
from training_helpers import StopAfter, assert_same_tensors, saved_tensors, without_wall_time

from dynalora.data import get_task, load_split
from dynalora.training import TrainConfig, evaluate, train

pytestmark = pytest.mark.integration


def sst2_config(glue_dir: Path, output: Path, **settings) -> TrainConfig:
    return TrainConfig(task="sst2", method="lora", model=str(minilm_path()), data_dir=str(glue_dir),
                       output=str(output), progress=False, **settings)


@pytest.fixture(scope="module")
def sst2_run(glue_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """LoRA at the method's default lr: 512 training sentences, 2 epochs, 256 dev sentences."""
    out = tmp_path_factory.mktemp("sst2_lora")
    config = sst2_config(glue_dir, out, max_train_samples=512, max_eval_samples=256, epochs=2.0)
    return out, config, train(config)


def test_short_lora_run_beats_the_majority_class_clearly(sst2_run, glue_dir: Path) -> None:
    _, config, metrics = sst2_run
    dev = load_split(get_task("sst2"), "dev", glue_dir, config.max_eval_samples, config.seed)  # the slice scored
    labels = [example.label for example in dev]
    majority = max(labels.count(v) for v in set(labels)) / len(labels)
    assert metrics["n_examples"] == len(dev) == 256
    assert metrics["metrics"]["accuracy"] >= majority + 0.1, (metrics["metrics"], majority)
    assert metrics["metrics"]["roc_auc"] >= 0.7


def test_evaluate_reproduces_the_real_run_exactly(sst2_run) -> None:
    out, _, metrics = sst2_run
    assert evaluate(out)["metrics"] == metrics["metrics"] == json.loads((out / "metrics.json").read_text())["metrics"]


def test_killed_and_resumed_real_run_matches_an_uninterrupted_one(glue_dir: Path, tmp_path: Path) -> None:
    def config(out: Path, **extra) -> TrainConfig:  # 4 steps of 32; a checkpoint after steps 2 and 4
        return sst2_config(glue_dir, out, max_train_samples=128, max_eval_samples=64, epochs=1.0,
                           checkpoint_every=2, **extra)

    straight = train(config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "resumed"), callbacks=[StopAfter(3)])
    resumed = train(config(tmp_path / "resumed", resume=True))
    assert resumed["steps"] == 4
    assert without_wall_time(resumed) == without_wall_time(straight)
    assert_same_tensors(saved_tensors(tmp_path / "resumed"), saved_tensors(tmp_path / "straight"))
