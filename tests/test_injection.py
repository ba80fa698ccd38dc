"""Choosing modules to adapt (names, regex, all-linear, defaults, patterns) and config checks."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_bert, tiny_gpt2, tiny_llama
from lora_helpers import lora_layer_names
from torch import nn

from dynalora import ConfigError, LoraConfig, TargetError, get_lora_model
from dynalora.adapters import config_from_dict, resolve_targets


def short(names: list[str]) -> set[str]:
    return {n.split(".")[-1] for n in names}


@pytest.mark.parametrize(("build", "expected"), [
    (tiny_bert, {"query", "value"}),
    (tiny_llama, {"q_proj", "v_proj"}),
    (tiny_gpt2, {"c_attn"}),
])
def test_default_targets_per_architecture(build, expected):
    model = get_lora_model(build(), LoraConfig(r=2))
    names = lora_layer_names(model)
    assert short(names) == expected
    assert len(names) == 2 * len(expected)  # every one of the 2 blocks


def test_names_match_whole_name_or_dotted_suffix():
    model = tiny_bert()
    chosen = resolve_targets(model, LoraConfig(target_modules=["attention.output.dense", "key"]))
    assert chosen == [
        "bert.encoder.layer.0.attention.self.key", "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.output.dense",
    ]
    # A suffix must start at a dot: "ey" is not "key".
    with pytest.raises(TargetError, match=r"\['ey'\]"):
        resolve_targets(model, LoraConfig(target_modules=["ey"]))


def test_regex_targets_match_the_full_name():
    model = tiny_llama()
    chosen = resolve_targets(model, LoraConfig(target_modules=r".*\.1\.self_attn\.(q|k)_proj"))
    assert chosen == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]


@pytest.mark.parametrize(("build", "heads"), [
    (tiny_bert, {"classifier", "bert.pooler.dense"}),
    (tiny_llama, {"lm_head"}),
    (tiny_gpt2, {"lm_head"}),
])
def test_all_linear_leaves_the_heads_alone(build, heads):
    model = build()
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}
    chosen = set(resolve_targets(model, LoraConfig(target_modules="all-linear")))
    assert chosen == linear - heads
    assert heads <= linear


def test_exclude_modules():
    model = tiny_llama()
    config = LoraConfig(target_modules="all-linear", exclude_modules=["mlp.down_proj", "layers.0.self_attn.o_proj"])
    chosen = resolve_targets(model, config)
    assert "model.layers.1.mlp.up_proj" in chosen
    assert not any(n.endswith("down_proj") for n in chosen)
    assert "model.layers.0.self_attn.o_proj" not in chosen
    assert "model.layers.1.self_attn.o_proj" in chosen


def test_an_exclusion_that_excludes_nothing_is_a_warned_typo():
    with pytest.warns(UserWarning, match=r"exclude_modules \['qury'\] exclude none"):
        chosen = resolve_targets(tiny_bert(), LoraConfig(target_modules=["query", "value"], exclude_modules=["qury"]))
    assert len(chosen) == 4


def test_peft_shorthands_and_nulls_are_read_as_peft_means_them():
    config = LoraConfig(modules_to_save="classifier", rank_pattern=None, alpha_pattern=None,
                        target_modules=("query",), exclude_modules=".*layer\\.0\\..*")
    assert config.modules_to_save == ["classifier"] and config.target_modules == ["query"]
    assert config.rank_pattern == {} and config.alpha_pattern == {}
    assert config_from_dict({**config.to_dict(), "rank_pattern": None}) == config  # a saved null
    chosen = resolve_targets(tiny_bert(), config)  # a string exclude_modules is a full regex, as in PEFT
    assert chosen == ["bert.encoder.layer.1.attention.self.query"]


def test_unknown_target_lists_the_existing_names_and_changes_nothing():
    model = tiny_bert()
    with pytest.raises(TargetError, match=r"\['q_proj'\].*query.*value") as err:
        get_lora_model(model, LoraConfig(target_modules=["q_proj", "query"]))
    assert "attention.self.key" in str(err.value)
    assert not lora_layer_names(model)
    with pytest.raises(TargetError, match=r"matches no linear layer"):
        get_lora_model(model, LoraConfig(target_modules=r"encoder\.nothing.*"))
    with pytest.raises(TargetError, match=r"modules_to_save.*'head'"):
        get_lora_model(model, LoraConfig(modules_to_save=["head"]))
    assert not lora_layer_names(model)


def test_model_without_default_targets_asks_for_them():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TargetError, match=r"no default target modules.*pass target_modules"):
        get_lora_model(model, LoraConfig())
    assert lora_layer_names(get_lora_model(model, LoraConfig(r=4, target_modules=["0"]))) == ["base_model.0"]


def test_rank_and_alpha_patterns_use_peft_matching():
    config = LoraConfig(
        r=4, alpha=8, target_modules=["q_proj", "v_proj"],
        rank_pattern={"layers.0.self_attn.q_proj": 2, r"layers\.1\..*v_proj": 6},
        alpha_pattern={"v_proj": 3.0},
    )
    model = get_lora_model(tiny_llama(), config)
    got = {n.removeprefix("model.layers."): (a.r, a.scaling) for n, a in model.adapter_modules().items()}
    assert got == {
        "0.self_attn.q_proj": (2, 8 / 2),
        "0.self_attn.v_proj": (4, 3 / 4),
        "1.self_attn.q_proj": (4, 8 / 4),
        "1.self_attn.v_proj": (6, 3 / 6),
    }


def test_rslora_scaling():
    model = get_lora_model(tiny_bert(), LoraConfig(r=16, alpha=8, use_rslora=True))
    assert {a.scaling for a in model.adapter_modules().values()} == {8 / math.sqrt(16)}


@pytest.mark.parametrize(("changes", "field"), [
    ({"r": 0}, "r"),
    ({"r": -3}, "r"),
    ({"r": 2.5}, "r"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": "16"}, "alpha"),
    ({"dropout": "1e-1"}, "dropout"),
    ({"r": True}, "r"),
    ({"dropout": 1.0}, "dropout"),
    ({"init": "xavier"}, "init"),
    ({"gating": "soft"}, "gating"),
    ({"rank_pattern": {"query": -1}}, "rank_pattern['query']"),
    ({"alpha_pattern": {"query": 0}}, "alpha_pattern['query']"),
    ({"rank_pattern": {"query(": 2}}, "rank_pattern key"),
    ({"target_modules": "*query"}, "target_modules"),
    ({"target_modules": [1]}, "target_modules"),
    ({"use_rslora": "no"}, "use_rslora"),
    ({"rank_pattern": "query:2"}, "rank_pattern"),
    ({"alpha_pattern": ["query"]}, "alpha_pattern"),
    ({"modules_to_save": {"classifier": 1}}, "modules_to_save"),
    ({"exclude_modules": [None]}, "exclude_modules"),
])
def test_bad_config_values_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        LoraConfig(**changes)
    assert str(err.value).startswith(f"{field}=")


def test_config_round_trip_and_unknown_fields():
    config = LoraConfig(r=3, target_modules=["query"], rank_pattern={"value": 1})
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown field.*'rank'"):
        config_from_dict({**config.to_dict(), "rank": 3})
    with pytest.raises(ConfigError, match=r"method='nope'"):
        config_from_dict({"method": "nope"})


def test_only_linear_and_conv1d_can_be_wrapped():
    from dynalora import LoraLayer

    with pytest.raises(TypeError, match=r"not Embedding"):
        LoraLayer(nn.Embedding(5, 4))
