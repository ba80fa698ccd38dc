"""The rank rule, weights and budget projection as pure functions; config validation."""

import random

import pytest
import torch

from dynalora import ConfigError
from dynalora.adapters.config import config_from_dict
from dynalora.allocation import (
    DynamicLoraConfig,
    Rank1LoraConfig,
    allocation_shares,
    clamp_to_mean_one,
    project_to_budget,
    rank_scores,
    settle_ranks,
    uniform_budget,
)


def cost(ranks, costs):
    return sum(r * c for r, c in zip(ranks, costs))


def test_budget_is_never_exceeded_and_ranks_stay_in_bounds():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 8)
        costs = [rng.randint(3, 40) for _ in range(n)]
        r_min, r_max = rng.randint(0, 2), rng.randint(3, 12)
        scores = [rng.random() * rng.choice([0, 1, 10]) for _ in range(n)]
        budget = rng.randint(r_min * sum(costs), r_max * sum(costs) + 50)
        for exact in (True, False):
            ranks = project_to_budget(scores, costs, budget, r_min, r_max, exact)
            assert cost(ranks, costs) <= budget
            assert all(r_min <= r <= r_max for r in ranks)
            if exact:  # nothing more fits: every layer is full or costs more than what is left
                left = budget - cost(ranks, costs)
                assert all(r == r_max or c > left for r, c in zip(ranks, costs))


def test_a_cap_per_layer_is_never_passed_and_the_rest_of_the_budget_goes_elsewhere():
    """A layer's rank is pointless above min(in, out); with a cap per layer the budget it cannot
    take goes to the others, also when hysteresis keeps some layers where they are."""
    costs = [32, 32, 32]
    assert project_to_budget([1, 1, 10], costs, 24 * 32, 1, [32, 32, 16]) == [4, 4, 16]
    assert settle_ranks([1, 1, 10], costs, 24 * 32, [8, 8, 8], 1, 1, [32, 32, 16]) == [4, 4, 16]
    with pytest.raises(ValueError, match="3 scores but 2 rank caps"):
        project_to_budget([1, 1, 1], costs, 96, 0, [8, 8])


def test_budget_met_exactly_with_equal_costs_and_by_largest_remainder():
    costs = [10, 10, 10]
    # lambda * (1, 1, 1.2) spends 70: real ranks (2.19, 2.19, 2.62); floors (2, 2, 2) cost 60,
    # the largest remainder (layer 2) gets the last rank.
    assert project_to_budget([1, 1, 1.2], costs, 70, 0, 8) == [2, 2, 3]
    assert cost(project_to_budget([0.3, 5, 2], costs, 120, 0, 8), costs) == 120
    # Truncation alone would leave budget unspent.
    ranks = project_to_budget([1, 1, 1], costs, 100, 0, 8)
    assert cost(ranks, costs) == 100 and sorted(ranks) == [3, 3, 4]


def test_not_exact_only_caps_and_rounds_to_nearest():
    assert project_to_budget([1.2, 2.7], [10, 10], 1000, 0, 8, exact=False) == [1, 3]
    ranks = project_to_budget([4, 4], [10, 10], 40, 0, 8, exact=False)
    assert ranks == [2, 2]


def test_budget_below_r_min_floor_is_an_error():
    with pytest.raises(ValueError, match="budget=5"):
        project_to_budget([1, 1], [10, 10], 5, 1, 4)


def test_higher_score_never_gets_lower_rank():
    ranks = project_to_budget([0.5, 1.0, 2.0, 4.0], [20] * 4, 20 * 16, 0, 16)
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]


def test_uniform_budget_is_uniform_lora():
    assert uniform_budget([64, 96], 8) == 8 * 64 + 8 * 96


def test_shares_sum_to_one_and_follow_importance():
    imp = torch.tensor([1.0, 2.0, 4.0])
    for weighting in ("softmax", "linear"):
        a = allocation_shares(imp, weighting)
        assert torch.isclose(a.sum(), torch.tensor(1.0, dtype=a.dtype))
        assert a[0] < a[1] < a[2]
    assert torch.allclose(allocation_shares(imp, "linear"), (imp / 7).double())
    # tau is scale-free: multiplying importance by 1000 changes nothing.
    assert torch.allclose(allocation_shares(imp, "softmax", 0.5), allocation_shares(imp * 1000, "softmax", 0.5))
    # Lower temperature is sharper.
    assert allocation_shares(imp, "softmax", 0.1)[2] > allocation_shares(imp, "softmax", 1.0)[2]
    for weighting in ("softmax", "linear"):
        assert torch.allclose(allocation_shares(torch.zeros(4), weighting), torch.full((4,), 0.25, dtype=torch.float64))


def test_clamp_to_mean_one_is_exact_and_bounded():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        w = torch.rand(7, generator=gen) ** 4 * 20
        out = clamp_to_mean_one(w, 0.3, 2.5)
        assert abs(float(out.mean()) - 1.0) < 1e-9
        assert float(out.min()) >= 0.3 - 1e-12 and float(out.max()) <= 2.5 + 1e-12
        free = (out > 0.3 + 1e-9) & (out < 2.5 - 1e-9)
        if int(free.sum()) >= 2:  # unclamped entries keep their ratios
            ratio = out[free] / w[free].double()
            assert torch.allclose(ratio, ratio[0].expand_as(ratio))


def test_rank_scores_variance_and_gamma():
    v = torch.tensor([1.0, 4.0])
    w = torch.tensor([2.0, 0.5])
    paper = rank_scores(8, v, w, beta=1.0, gamma=0.0)
    assert paper[1] > paper[0]  # gamma=0: only the input variance matters
    assert torch.allclose(paper, torch.tensor([8 * 1.4, 8 * 2.6], dtype=torch.float64))
    weighted = rank_scores(8, v, w, beta=1.0, gamma=1.0)
    assert weighted[0] > weighted[1]  # here the weight outweighs the variance
    assert torch.allclose(rank_scores(8, torch.zeros(2), w, 1.0, 0.0), torch.full((2,), 16.0, dtype=torch.float64))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"tau": 0}, "tau"),
    ({"weighting": "max"}, "weighting"),
    ({"w_min": 1.5}, "w_min"),
    ({"w_max": 0.5}, "w_max"),
    ({"r_min": 9, "r": 8}, "r"),
    ({"r_max": 4, "r": 8}, "r"),
    ({"budget": -3}, "budget"),
    ({"t_warmup": 50, "t_final": 10}, "t_final"),
    ({"delta_t": 0}, "delta_t"),
    ({"shrink": "random"}, "shrink"),
    ({"lambda_a": -1.0}, "lambda_a"),
    ({"gating": "scalar"}, "gating"),
    ({"importance_beta": 1.0}, "importance_beta"),
    ({"stats_every": 0}, "stats_every"),
    ({"weight_every": 0}, "weight_every"),
    ({"tau": "1e-4"}, "tau"),  # YAML reads 1e-4 without a dot as a string
    ({"lambda_b": None}, "lambda_b"),
    ({"r_min": True}, "r_min"),
    ({"importance": "grad"}, "importance"),
    ({"weight_mode": "both"}, "weight_mode"),
    ({"hysteresis": -1}, "hysteresis"),
    ({"reallocations": -1}, "reallocations"),
    ({"grow_state": "random"}, "grow_state"),
])
def test_dynamic_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        DynamicLoraConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"gating": "none"}, "gating"),
    ({"gating": "input", "prune_by": "gate"}, "prune_by"),
    ({"l1": -0.1}, "l1"),
    ({"budget": -1}, "budget"),
    ({"prune_every": 0}, "prune_every"),
    ({"l1": "0.01"}, "l1"),
    ({"keep_fraction": 0.0}, "keep_fraction"),
])
def test_rank1_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        Rank1LoraConfig(**kwargs)


def test_configs_round_trip_and_resolve_schedules():
    config = DynamicLoraConfig(r=4, beta=0.5, budget=1000, t_warmup=3)
    back = config_from_dict(config.to_dict())
    assert type(back) is DynamicLoraConfig and back == config
    # Final at 60%, 4 reallocations between warm-up and final (the last one at most at t_final).
    assert config.resolve_schedule(200) == (3, 120, 29)
    assert DynamicLoraConfig().resolve_schedule(1000) == (100, 600, 125)
    assert DynamicLoraConfig().r_max == 32 and DynamicLoraConfig().r_min == 1
    with pytest.raises(ConfigError, match="t_warmup"):
        DynamicLoraConfig().resolve_schedule(None)
    rank1 = Rank1LoraConfig(r=6)
    assert rank1.gating == "scalar" and rank1.prune_by == "sensitivity"
    assert Rank1LoraConfig(gating="input").prune_by == "sensitivity"
    assert type(config_from_dict(rank1.to_dict())) is Rank1LoraConfig
    assert rank1.resolve_schedule(100) == (10, 60, 5)
    # The default budget prunes: half of the initial components.
    assert rank1.resolve_budget(24) == 12 and Rank1LoraConfig(budget=5).resolve_budget(24) == 5


def test_settle_ranks_keeps_changes_within_the_hysteresis_and_still_meets_the_budget():
    costs = [10, 10, 10, 10]
    current = [4, 4, 4, 4]
    # Targets 5, 3, 7, 1: the first two move by one (noise), they keep 4; the others share the rest.
    scores = torch.tensor([5.0, 3.0, 7.0, 1.0], dtype=torch.float64)
    assert project_to_budget(scores, costs, 160, 1, 16) == [5, 3, 7, 1]
    settled = settle_ranks(scores, costs, 160, current, hysteresis=1, r_min=1, r_max=16)
    assert settled[:2] == [4, 4] and settled[2] > 4 > settled[3] and cost(settled, costs) == 160
    assert settle_ranks(scores, costs, 160, current, hysteresis=0, r_min=1, r_max=16) == [5, 3, 7, 1]
    # Nothing moves by more than the hysteresis: the ranks stay exactly.
    near = torch.tensor([4.6, 3.5, 4.4, 3.5], dtype=torch.float64)
    assert settle_ranks(near, costs, 160, current, hysteresis=1, r_min=1, r_max=16) == current
