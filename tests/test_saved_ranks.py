"""One source of truth for ranks: a saved adapter's config states the ranks its tensors have."""

from __future__ import annotations

import json
import re

from conftest import tiny_bert

from dynalora import DynaLoraModel, LoraConfig, get_lora_model
from dynalora.adapters import config_from_dict
from dynalora.allocation import DynamicLoraConfig, resize_adapter


def test_resized_layers_are_saved_in_rank_pattern_and_read_back(tmp_path) -> None:
    model = get_lora_model(tiny_bert(), LoraConfig(r=4, rank_pattern={"value": 3}))
    adapters = model.adapter_modules()
    grown, shrunk, *_ = sorted(adapters)
    resize_adapter(adapters[grown], 7)
    resize_adapter(adapters[shrunk], 2)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "dynalora_config.json").read_text())
    expected = {re.escape(name): r for name, r in model.ranks().items() if r != 4}
    assert saved["config"]["rank_pattern"] == expected
    assert expected[re.escape(grown)] == 7 and expected[re.escape(shrunk)] == 2
    assert {saved["layers"][name]["r"] for name in (grown, shrunk)} == {7, 2}
    # the config alone now rebuilds the same shapes on a fresh base model
    assert get_lora_model(tiny_bert(), config_from_dict(saved["config"])).ranks() == model.ranks()
    loaded = DynaLoraModel.from_pretrained(tiny_bert(), tmp_path)
    assert loaded.ranks() == model.ranks()
    assert loaded.configs["default"].rank_pattern == expected
    # the model's own config object is not changed by saving
    assert model.configs["default"].rank_pattern == {"value": 3}


def test_a_dynamic_adapter_saves_its_final_ranks(tmp_path) -> None:
    model = get_lora_model(tiny_bert(), DynamicLoraConfig(r=4))
    name = sorted(model.adapter_modules())[0]
    resize_adapter(model.adapter_modules()[name], 0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "dynalora_config.json").read_text())["config"]
    assert saved["method"] == "dynamic" and saved["rank_pattern"] == {re.escape(name): 0}
    assert DynaLoraModel.from_pretrained(tiny_bert(), tmp_path).ranks() == model.ranks()
