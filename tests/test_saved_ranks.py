"""One source of truth for ranks: a saved adapter's config states the ranks its tensors have."""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_bert

from dynalora import DynaLoraModel, LoraConfig, RunFolderError, get_lora_model
from dynalora.adapters import config_from_dict
from dynalora.allocation import DynamicLoraConfig, resize_adapter
from dynalora.training.api import read_run


def test_resized_layers_are_saved_in_rank_pattern_and_read_back(tmp_path) -> None:
    config = LoraConfig(r=4, rank_pattern={"value": 3}, target_modules=["query", "value", "key"],
                        exclude_modules=["layer.1.attention.self.key"])
    model = get_lora_model(tiny_bert(), config)
    adapters = model.adapter_modules()
    grown, shrunk, *_ = sorted(adapters)
    resize_adapter(adapters[grown], 7)
    resize_adapter(adapters[shrunk], 2)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "dynalora_config.json").read_text())
    # the user's pattern kept; in front of it (first match wins) the layers it no longer describes
    expected = {re.escape(grown): 7, re.escape(shrunk): 2, "value": 3}
    assert saved["config"]["rank_pattern"] == expected and list(saved["config"]["rank_pattern"])[-1] == "value"
    assert {saved["layers"][name]["r"] for name in (grown, shrunk)} == {7, 2}
    # the config alone now rebuilds the same shapes on a fresh base model
    assert get_lora_model(tiny_bert(), config_from_dict(saved["config"])).ranks() == model.ranks()
    loaded = DynaLoraModel.from_pretrained(tiny_bert(), tmp_path)
    assert loaded.ranks() == model.ranks()
    assert loaded.configs["default"] == config.replace(rank_pattern=expected)  # targets as the user wrote them
    # the model's own config object is not changed by saving, and a loaded adapter saves the same file
    assert model.configs["default"].rank_pattern == {"value": 3}
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "dynalora_config.json").read_text())["config"] == saved["config"]


def test_a_dynamic_adapter_saves_its_final_ranks(tmp_path) -> None:
    model = get_lora_model(tiny_bert(), DynamicLoraConfig(r=4))
    name = sorted(model.adapter_modules())[0]
    resize_adapter(model.adapter_modules()[name], 0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "dynalora_config.json").read_text())["config"]
    assert saved["method"] == "dynamic" and saved["rank_pattern"] == {re.escape(name): 0}
    assert DynaLoraModel.from_pretrained(tiny_bert(), tmp_path).ranks() == model.ranks()
    with pytest.raises(RunFolderError, match=r"not a run of `dynalora train`; it holds an adapter.*DynaLoraModel\.from_pretrained"):
        read_run(tmp_path)  # what `dynalora eval/inspect/merge` say of such a folder
