"""Every bench method trains and evaluates through the real loop on a tiny model; PEFT's
AdaLoRA really reallocates inside our loop; equal-budget methods end at LoRA's budget."""

from __future__ import annotations

import json

import pytest
import torch
from bench_helpers import save_tiny_bert
from conftest import tiny_bert

from dynalora.adapters import LoraConfig, get_lora_model
from dynalora.adapters.config import ConfigError
from dynalora.bench.measure import adapter_budget, merge_for_inference
from dynalora.bench.profiles import ALL_METHODS, EQUAL_BUDGET_METHODS
from dynalora.bench.worker import lora_budget
from dynalora.training import TrainConfig, evaluate, load_trained, train
from dynalora.training.peft_methods import adalora_schedule


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def run(tiny_dir, glue_dir, tmp_path, method, **kw):
    settings = {"task": "sst2", "method": method, "model": str(tiny_dir), "data_dir": str(glue_dir),
                "output": str(tmp_path / method), "epochs": 1, "batch_size": 8, "max_train_samples": 32,
                "max_eval_samples": 16, "rank": 4, "alpha": 8, "progress": False, **kw}
    return train(TrainConfig(**settings))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_bench_method_trains_and_reloads(method, tiny_dir, glue_dir, tmp_path):
    metrics = run(tiny_dir, glue_dir, tmp_path, method)
    assert metrics["steps"] == 4 and 0 <= metrics["metrics"]["accuracy"] <= 1
    # The saved run reloads and reproduces its own evaluation exactly.
    assert evaluate(tmp_path / method, device="cpu")["metrics"]["main"] == pytest.approx(metrics["metrics"]["main"])


def test_peft_adalora_reallocates_ranks_in_our_loop(tiny_dir, glue_dir, tmp_path):
    run(tiny_dir, glue_dir, tmp_path, "peft-adalora", max_train_samples=96)  # 12 steps
    report = json.loads((tmp_path / "peft-adalora" / "adalora_ranks.json").read_text())
    schedule, history = report["schedule"], report["history"]
    assert schedule["init_r"] == 6 and schedule["target_r"] == 4 and schedule["total_step"] == 12
    first, last = history[0]["ranks"], history[-1]["ranks"]
    assert set(first.values()) == {6}  # nothing masked during the warm-up
    # update_and_allocate ran (it needs the gradients, so it ran before zero_grad) and pruned
    # the live triplets down to the target budget: 4 per layer on average.
    assert sum(last.values()) == 4 * len(last) < sum(first.values())
    assert len(history) > 2


@pytest.mark.parametrize("method", EQUAL_BUDGET_METHODS)
def test_equal_budget_methods_end_within_loras_budget(method, tiny_dir, glue_dir, tmp_path):
    run(tiny_dir, glue_dir, tmp_path, method, max_train_samples=96)
    model, _, _ = load_trained(tmp_path / method)
    budget, reference = adapter_budget(model), lora_budget(model, 4)
    assert reference == 2 * 2 * 4 * (32 + 32)  # 2 layers x (query, value) x r (d + k)
    assert 0 < budget <= reference
    if method in ("lora", "peft-lora", "peft-adalora"):
        assert budget == reference


def test_budget_counts_ours_and_peft_alike_and_merging_keeps_outputs():
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    ours = get_lora_model(tiny_bert(), LoraConfig(r=4, target_modules=["query", "value"]))
    theirs = get_peft_model(tiny_bert(), PeftLoraConfig(r=4, target_modules=["query", "value"]))
    assert adapter_budget(ours) == adapter_budget(theirs) == 4 * 4 * 64
    assert adapter_budget(tiny_bert()) is None
    ids = torch.randint(0, 120, (2, 9))
    for model in (ours, theirs):
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p)
        with torch.no_grad():
            before = model(input_ids=ids).logits
            merged, flag = merge_for_inference(model)
            assert flag == "yes"
            assert torch.allclose(merged(input_ids=ids).logits, before, atol=1e-4)
    assert merge_for_inference(tiny_bert())[1] == "n/a"


def test_adalora_schedule_fits_the_run_and_rejects_too_short_runs():
    s = adalora_schedule(100)
    assert (s["tinit"], s["tfinal"], s["deltaT"]) == (10, 30, 3)
    assert s["tinit"] < s["total_step"] - s["tfinal"]
    short = adalora_schedule(3)
    assert short["tinit"] < short["total_step"] - short["tfinal"]
    with pytest.raises(ConfigError, match="at least 3"):
        adalora_schedule(2)
