"""The README's library examples run as written (tiny BERT): the names they use exist, the
files they promise are written, and the controller loop really reallocates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_bert

from dynalora import get_lora_model


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    return re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S).group(1)


def test_the_library_example_writes_every_format_it_names(tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dynalora.packaged.minilm_folder", lambda: tiny_model_dir)  # tiny and fast
    namespace: dict = {}
    exec(compile(readme_block("library-example"), "README.md", "exec"), namespace)
    for folder, name in (("adapter", "dynalora_config.json"), ("adapter", "dynalora_adapter.safetensors"),
                         ("peft", "adapter_config.json"), ("peft", "adapter_model.safetensors"),
                         ("peft-folded", "adapter_model.safetensors")):
        assert (tmp_path / "out" / folder / name).is_file(), f"{folder}/{name}"
    assert not any(getattr(m, "merged", False) for m in namespace["model"].modules())  # merge(); unmerge()


def test_the_controller_example_trains_and_reallocates_within_the_budget() -> None:
    torch.manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 120, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long),
                "labels": torch.randint(0, 2, (8,))} for _ in range(40)]
    namespace = {"base": tiny_bert().train(), "get_lora_model": get_lora_model, "batches": batches,
                 "n_steps": len(batches)}
    exec(compile(readme_block("controller-example"), "README.md", "exec"), namespace)
    controller, model = namespace["controller"], namespace["model"]
    head = [p for name, p in model.named_parameters() if "classifier" in name]
    assert head and all(p.requires_grad for p in head)  # the example trains the task head too
    assert controller.history, "no reallocation ran in the loop as written"
    assert all(record["parameters"] <= record["budget"] for record in controller.history)
    assert controller.step == len(batches)
