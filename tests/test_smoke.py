import torch
from conftest import tiny_bert

from dynalora import LoraConfig, get_lora_model


def test_zero_B_leaves_outputs_unchanged():
    base = tiny_bert()
    x = torch.randint(0, 120, (2, 5))
    before = base(x).logits.clone()
    model = get_lora_model(base, LoraConfig(r=4))
    assert torch.equal(model(x).logits, before)
