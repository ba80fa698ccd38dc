"""Reading a saved adapter as plain matrices per layer, and the frozen weights it was trained on.

The analyses work on numbers, not on a live model: each adapted layer becomes its factors
`A` (r x in), the effective `B` (out x r, with any scalar gates folded in) and
`Delta W = s * w * B A` (out x in). Base weights come straight from the base model's
safetensors files, matched to layer names by dotted suffix, so no model needs to be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dynalora.adapters.model import read_adapter
from dynalora.files import AdapterFileError, load_tensors


@dataclass
class LayerFactors:
    """One adapted layer of a saved adapter, in float64 for stable SVDs."""

    name: str
    A: torch.Tensor  # r x in
    B: torch.Tensor  # out x r, gates folded in
    scale: float  # s * w: the adapter's scaling times its allocation weight
    input_gated: bool = False  # input-conditional gates were present (treated as open)

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)


def load_factors(path: str | Path) -> tuple[dict[str, LayerFactors], dict]:
    """The factors of every layer of the adapter saved in `path`, and its JSON document."""
    document, state = read_adapter(path)
    layers: dict[str, LayerFactors] = {}
    for name, info in document["layers"].items():
        try:
            A = state[f"{name}.lora_A"].double()
            B = state[f"{name}.lora_B"].double()
        except KeyError as err:
            raise AdapterFileError(f"{path}: layer {name} has no tensor {err.args[0]}") from None
        gate = state.get(f"{name}.gate")
        if gate is not None:
            B = B * gate.double()
        weight = state.get(f"{name}.weight")
        w = float(weight) if weight is not None else float(info.get("weight", 1.0))
        layers[name] = LayerFactors(name, A, B, float(info["scaling"]) * w,
                                    input_gated=f"{name}.gate_proj.weight" in state)
    return layers, document


def base_weight_files(base: str | Path) -> list[Path]:
    base = Path(base)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise AdapterFileError(f"base model folder not found: {base}")
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise AdapterFileError(f"no *.safetensors weights in base model folder {base}")
    return files


def load_base_weights(base: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """W0 (out x in, float64) for each adapted layer name, from the base's safetensors files.

    A layer `bert.encoder.layer.0.attention.self.query` matches the key
    `encoder.layer.0.attention.self.query.weight` (or any key that is a dotted suffix of it),
    since task models prefix the backbone's names. GPT-2 Conv1D weights (in x out) are
    recognised by their shape and transposed.
    """
    tensors: dict[str, torch.Tensor] = {}
    for file in base_weight_files(base):
        tensors.update(load_tensors(file))
    out: dict[str, torch.Tensor] = {}
    for name in names:
        parts = f"{name}.weight".split(".")
        key = next((".".join(parts[i:]) for i in range(len(parts) - 1) if ".".join(parts[i:]) in tensors), None)
        if key is None:
            raise AdapterFileError(
                f"the base weights in {base} have no tensor for adapted layer {name!r} "
                f"(looked for a suffix of {name}.weight); is this the adapter's base model?"
            )
        out[name] = tensors[key].double()
    return out
