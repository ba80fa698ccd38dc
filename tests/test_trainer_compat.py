"""Our wrapped model in transformers' `Trainer` as it comes: the README's example runs as written
(tiny BERT, default TrainingArguments) and reports eval_loss; checkpoints hold only the adapter;
PEFT's argument names and task_type behave as in PEFT."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_bert
from safetensors.torch import load_file
from training_helpers import sentences

from dynalora import DynaLoraModel, LoraConfig, get_lora_model


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"<!-- trainer-example -->\n```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_trainer_example_runs_with_default_arguments(tiny_model_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = sentences(48, seed=7)
    namespace = {"model_path": str(tiny_model_dir), "texts": [t for t, _ in rows], "labels": [y for _, y in rows]}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    trainer, model = namespace["trainer"], namespace["model"]
    assert trainer.state.global_step == 18  # 3 epochs (the default) of 6 batches of 8 (the default)
    result = trainer.evaluate()
    assert result["eval_loss"] > 0 and 0 <= result["eval_accuracy"] <= 1  # compute_metrics was called
    assert "trainable params:" in printed.getvalue() and "eval_loss" in printed.getvalue()
    assert "classifier" in model.modules_to_save  # task_type="SEQ_CLS" trains the head
    reloaded = DynaLoraModel.from_pretrained(tiny_reload(tiny_model_dir), tmp_path / "out" / "adapter")
    batch = {k: torch.tensor([v]) for k, v in namespace["data"][0].items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)


def tiny_reload(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def test_trainer_checkpoints_hold_only_the_adapter_and_the_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = sentences(32, seed=3)
    data = Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}).map(
        lambda b: tokenizer(b["text"]), batched=True)
    model = get_lora_model(tiny_reload(tiny_model_dir), LoraConfig(r=4, task_type="SEQ_CLS"))
    args = TrainingArguments(str(tmp_path / "run"), max_steps=4, save_steps=2, per_device_train_batch_size=8)
    Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
    saved = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    assert saved and all(".adapters." in k or ".classifier." in k for k in saved), sorted(saved)[:5]
    # lora_A, lora_B and the allocation weight in query and value of 2 layers; classifier weight, bias
    assert len(saved) == 2 * 2 * 3 + 2
    fresh = get_lora_model(tiny_reload(tiny_model_dir), LoraConfig(r=4, task_type="SEQ_CLS"))
    fresh.load_state_dict(load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))  # strict
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_forward_shows_the_base_signature_and_the_class_names_labels() -> None:
    from transformers.utils.generic import find_labels

    model = get_lora_model(tiny_bert(), LoraConfig(r=2, task_type="SEQ_CLS"))
    assert "input_ids" in inspect.signature(model.forward).parameters
    assert "token_type_ids" in inspect.signature(model.forward).parameters
    assert find_labels(type(model)) == ["labels"]
    out = model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([1]))
    assert out.loss is not None and out.logits.shape == (1, 2)


def test_peft_names_mean_what_they_mean_in_peft() -> None:
    config = LoraConfig(r=4, lora_alpha=32, lora_dropout=0.05, task_type="SEQ_CLS")
    assert (config.alpha, config.dropout) == (32, 0.05)
    assert "lora_alpha" not in config.to_dict() and config.to_dict()["task_type"] == "SEQ_CLS"
    with pytest.raises(ValueError, match="lora_alpha"):
        LoraConfig(alpha=8, lora_alpha=32)
    with pytest.raises(ValueError, match="task_type"):
        LoraConfig(task_type="SEQ_CLASSIFICATION")


def test_a_fresh_head_left_frozen_is_named_in_a_warning(capsys) -> None:
    with pytest.warns(UserWarning, match=r"\['classifier'\] stays frozen"):
        model = get_lora_model(tiny_bert(), LoraConfig(r=2))
    assert not any(p.requires_grad for p in model.base_model.classifier.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = get_lora_model(tiny_bert(), LoraConfig(r=2, task_type="SEQ_CLS"))
    assert all(p.requires_grad for p in trained.base_model.classifier.parameters())
    trained.print_trainable_parameters()
    trainable, total = trained.get_nb_trainable_parameters()
    assert capsys.readouterr().out == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}\n"


def trains(model: DynaLoraModel, name: str) -> bool:
    return all(p.requires_grad for a in model.adapter_modules(name).values() for p in a.parameters())


def test_adapter_switching_and_deleting_behave_as_in_peft(tmp_path: Path) -> None:
    model = get_lora_model(tiny_bert(), LoraConfig(r=2, task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, task_type="SEQ_CLS"))
    assert trains(model, "b") and not trains(model, "a")
    model.set_adapter("a")  # the adapter that trains follows the active one, as in PEFT
    assert trains(model, "a") and not trains(model, "b")
    model.delete_adapter("b")  # the task head (from task_type) stays saved
    assert model.modules_to_save == ["classifier"]
    model.save_pretrained(tmp_path / "a")
    loaded = DynaLoraModel.from_pretrained(tiny_bert(), tmp_path / "a")
    assert torch.equal(loaded.base_model.classifier.weight, model.base_model.classifier.weight)
    loaded.add_adapter("c", LoraConfig(r=2, task_type="SEQ_CLS"))
    for p in loaded.parameters():
        p.requires_grad_(False)
    loaded.set_adapter("default")  # a model loaded for inference stays frozen
    assert not any(p.requires_grad for p in loaded.parameters())


def test_injecting_twice_is_refused_instead_of_overwriting_the_trained_adapter() -> None:
    base = tiny_bert()
    first = get_lora_model(base, LoraConfig(r=2, target_modules=["query"]))
    for wrapped in (base, first):
        with pytest.raises(ValueError, match="already holds dynalora adapters: add another with wrapper"):
            get_lora_model(wrapped, LoraConfig(r=4, target_modules=["query"]))
    assert set(first.ranks().values()) == {2}
    with pytest.raises(ValueError, match=r"config must be a LoraConfig.*not dict"):
        get_lora_model(tiny_bert(), {"r": 4})


def test_peft_model_methods_exist_under_their_peft_names() -> None:
    base = tiny_bert()
    ids = torch.randint(1, 120, (2, 6), generator=torch.Generator().manual_seed(0))
    before = base(input_ids=ids).logits
    model = get_lora_model(base, LoraConfig(r=2, target_modules=["query", "value"]))
    with torch.no_grad():
        for adapter in model.adapter_modules().values():
            adapter.lora_B.fill_(0.3)
    assert not torch.allclose(model(input_ids=ids).logits, before)
    with model.disable_adapter():
        assert torch.allclose(model(input_ids=ids).logits, before)
    assert model.peft_config["default"].r == 2 and model.get_base_model() is base
    with pytest.raises(AttributeError, match="neither DynaLoraModel nor the BertForSequenceClassification"):
        model.no_such_method()
    model.merge()
    plain = model.unload()  # without merging: the base model as it was
    assert plain is base and not any("lora" in n for n, _ in plain.named_modules())
    assert torch.allclose(plain(input_ids=ids).logits, before, atol=1e-6)  # merge, unmerge: float round-off


def test_adapters_of_a_half_precision_model_are_kept_in_float32_as_in_peft() -> None:
    ids = torch.randint(1, 120, (2, 6), generator=torch.Generator().manual_seed(0))
    model = get_lora_model(tiny_bert().to(torch.bfloat16), LoraConfig(r=2, task_type="SEQ_CLS"))
    assert {p.dtype for a in model.adapter_modules().values() for p in a.parameters()} == {torch.float32}
    out = model(input_ids=ids, labels=torch.tensor([0, 1]))
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert all(a.lora_A.grad is not None and a.lora_A.grad.dtype == torch.float32
               for a in model.adapter_modules().values())
    kept = get_lora_model(tiny_bert().to(torch.bfloat16), LoraConfig(r=2), autocast_adapter_dtype=False)
    assert {p.dtype for a in kept.adapter_modules().values() for p in a.parameters()} == {torch.bfloat16}
