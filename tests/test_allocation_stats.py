"""Running input statistics: exact merging, hooks only on sampled steps, padding skipped."""

import torch
from allocation_helpers import bert_batches, quiet_bert

from dynalora import LoraConfig, get_lora_model
from dynalora.allocation import InputStatistics, RunningMoments


def mean_feature_variance(rows: torch.Tensor) -> float:
    return float(rows.double().var(dim=0, unbiased=True).mean())


def test_merged_moments_equal_one_pass_over_everything():
    gen = torch.Generator().manual_seed(0)
    blocks = [torch.randn(n, 6, generator=gen) * (i + 1) + i for i, n in enumerate([5, 1, 17, 3])]
    whole = RunningMoments(6)
    whole.update(torch.cat(blocks))
    left, right = RunningMoments(6), RunningMoments(6)
    left.update(blocks[0])
    left.update(blocks[1])
    right.update(blocks[2])
    right.update(blocks[3])
    left.merge(right)  # e.g. two processes
    assert left.count == whole.count == 26
    assert torch.allclose(left.mean, whole.mean, rtol=0, atol=1e-12)
    assert torch.allclose(left.m2, whole.m2, rtol=1e-12, atol=1e-10)
    assert abs(left.variance() - mean_feature_variance(torch.cat(blocks))) < 1e-10
    restored = RunningMoments(6)
    restored.load_state_dict(left.state_dict())
    assert restored.variance() == left.variance()


def collector(model, max_tokens=10_000):
    layers = model.lora_layers()
    return InputStatistics(model.base_model, layers, max_tokens), layers


def test_hooks_exist_only_while_attached_and_skip_padding_and_eval():
    model = get_lora_model(quiet_bert(), LoraConfig(r=2))
    stats, layers = collector(model)
    batch = bert_batches(1, batch=4, seq=10)[0]
    batch["attention_mask"][:, 6:] = 0  # the last 4 positions are padding
    name = "bert.encoder.layer.0.attention.self.query"
    seen = {}
    handle = layers[name].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach().clone()))
    model(**batch)  # not attached: nothing collected
    assert stats.moments[name].count == 0 and not stats.attached
    stats.attach()
    assert sum(len(layer._forward_pre_hooks) for layer in layers.values()) == len(layers) + 1
    model(**batch)
    with torch.no_grad():
        model(**batch)  # evaluation-style forward: not counted
    stats.detach()
    handle.remove()
    assert all(len(layer._forward_pre_hooks) == 0 for layer in layers.values())
    real_tokens = seen["x"][:, :6].reshape(-1, 32)
    assert stats.moments[name].count == 24
    assert abs(stats.variances([name])[0].item() - mean_feature_variance(real_tokens)) < 1e-6
    model(**batch)
    assert stats.moments[name].count == 24


def test_token_subsample_is_strided_and_draws_no_random_numbers():
    model = get_lora_model(quiet_bert(), LoraConfig(r=2))
    stats, _ = collector(model, max_tokens=7)
    batch = bert_batches(1, batch=4, seq=10)[0]
    stats.attach()
    rng = torch.get_rng_state()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    stats.detach()
    assert torch.equal(torch.get_rng_state(), rng)
    counts = {m.count for m in stats.moments.values()}
    assert counts == {7}  # 40 tokens at stride ceil(40/7) = 6 -> 7 rows


class MaskedToy(torch.nn.Module):
    """One adapted projection called with an attention_mask keyword, like a transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(x)


def test_sampled_forward_never_reads_the_device():
    # Meta tensors hold no data: any host read (.item(), bool(), boolean-mask indexing) raises,
    # so a forward that completes on "meta" cannot have synchronised with an accelerator.
    model = get_lora_model(MaskedToy(), LoraConfig(r=2, target_modules=["proj"]))
    layers = model.lora_layers()
    stats = InputStatistics(model.base_model, layers, max_tokens=16)
    model.to("meta")
    stats.attach()
    x = torch.randn(3, 10, 8, device="meta")
    mask = torch.ones(3, 10, dtype=torch.long, device="meta")
    model(x, attention_mask=mask)
    model(x, attention_mask=mask)
    stats.detach()
    assert stats.moments["proj"].total.device.type == "meta"
    # The same masked, strided sampling on real data: 30 rows at stride 2; of the 15 sampled
    # rows, positions 6 and 8 of each sequence are padding and left out.
    model = get_lora_model(MaskedToy(), LoraConfig(r=2, target_modules=["proj"]))
    stats = InputStatistics(model.base_model, model.lora_layers(), max_tokens=16)
    x = torch.randn(3, 10, 8)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[:, 6:] = 0
    stats.attach()
    model(x, attention_mask=mask)
    stats.detach()
    sampled = x.reshape(30, 8)[::2][mask.reshape(30)[::2] != 0]
    assert stats.moments["proj"].count == sampled.shape[0] == 9
    assert abs(stats.variances(["proj"])[0].item() - mean_feature_variance(sampled)) < 1e-9
