"""Helpers shared by the LoRA core tests: inputs, randomised adapters, a few training steps."""

from __future__ import annotations

import torch
from torch import nn

from dynalora import DynaLoraModel, LoraLayer


def token_batch(vocab: int = 120, batch: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomise(model: DynaLoraModel, name: str | None = None, seed: int = 0,
              weights: bool = False) -> None:
    """Give adapter `name` a nonzero update: random B (and gates, and allocation weights)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapter_modules(name).values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.5)
            if adapter.gate is not None:
                adapter.gate.copy_(torch.rand(adapter.gate.shape, generator=generator) + 0.5)
            if weights:
                adapter.weight.fill_(float(torch.rand((), generator=generator)) * 1.5 + 0.25)


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on a made-up loss, so A, B and the head all move."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids).logits.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def lora_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def wide_bert() -> nn.Module:
    """tiny_bert's architecture at hidden size 48 instead of 32: same module names, other shapes."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForSequenceClassification(config).eval()
