"""Dynamic LoRA inside transformers.Trainer, through DynamicLoraCallback."""

import json

import pytest
import torch
from allocation_helpers import bert_batches, optimizer_matches_model, quiet_bert

from dynalora import get_lora_model
from dynalora.allocation import AllocationController, DynamicLoraCallback, DynamicLoraConfig
from dynalora.allocation.resize import unwrap_optimizer
from dynalora.files import AdapterFileError


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        batch = bert_batches(1, batch=n, seq=12)[0]
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def test_trainer_run_reallocates_ranks(tmp_path):
    from transformers import Trainer, TrainingArguments

    # tau / bounds / hysteresis loosened so that 30 steps on random data move ranks.
    config = DynamicLoraConfig(r=4, modules_to_save=["classifier"], delta_t=3, stats_every=2, beta=1.0,
                               hysteresis=0, tau=0.5, w_min=0.25, w_max=4.0)
    model = get_lora_model(quiet_bert(), config)
    controller = AllocationController(model)  # optimizer and run length come from the Trainer
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-2, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(64), callbacks=[DynamicLoraCallback(controller)])
    trainer.train()
    # Schedule from max_steps=30: warm-up 3, final 18, every 3 -> reallocations at 6, 9, ..., 18.
    assert controller.schedule == (3, 18, 3)
    assert [h["step"] for h in controller.history] == [6, 9, 12, 15, 18]
    assert controller.step == 30  # once per optimizer step, not per micro-batch
    assert len(set(model.ranks().values())) > 1
    assert sum(h["parameters"] == controller.budget for h in controller.history) == 5
    assert optimizer_matches_model(unwrap_optimizer(trainer.optimizer), model)
    assert not controller.stats.attached


def trainer_run(output_dir, max_steps, resume=None, restore=True):
    from transformers import Trainer, TrainingArguments

    config = DynamicLoraConfig(r=4, modules_to_save=["classifier"], t_warmup=2, t_final=10, delta_t=2,
                               stats_every=2, beta=1.0, hysteresis=0, tau=0.5, w_min=0.25, w_max=4.0)
    model = get_lora_model(quiet_bert(), config)
    callback = DynamicLoraCallback(AllocationController(model))
    if resume is not None and restore:
        callback.load_checkpoint(resume)  # resizes first, so the Trainer can load the weights
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=2e-2,
        report_to=[], save_strategy="steps", save_steps=6, logging_strategy="no", use_cpu=True,
        remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(48), callbacks=[callback])
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return model, callback.controller


def test_trainer_checkpoints_carry_the_controller_and_resume_at_the_saved_ranks(tmp_path):
    model, controller = trainer_run(tmp_path / "a", max_steps=12)
    saved = json.loads((tmp_path / "a" / "checkpoint-6" / "allocation_controller.json").read_text())
    assert saved["step"] == 6 and [h["step"] for h in saved["history"]] == [4, 6]
    assert len(set(saved["ranks"].values())) > 1  # resuming needs real resizing

    resumed, c2 = trainer_run(tmp_path / "b", max_steps=12, resume=tmp_path / "a" / "checkpoint-6")
    assert c2.step == 12 and [h["step"] for h in c2.history] == [4, 6, 8, 10]
    assert c2.history == controller.history and resumed.ranks() == model.ranks()
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(AdapterFileError, match="allocation controller state"):
        DynamicLoraCallback(c2).load_checkpoint(tmp_path)
    # Forgetting to restore the ranks first: an error that says what to call, not torch's size mismatch.
    with pytest.raises(AdapterFileError, match=r"resized the adapters.*DynamicLoraCallback\.load_checkpoint"):
        trainer_run(tmp_path / "c", max_steps=12, resume=tmp_path / "a" / "checkpoint-6", restore=False)
