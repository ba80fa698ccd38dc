"""Hugging Face PEFT's LoRA file format, out and in.

PEFT computes each layer's scaling as `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA), with
per-layer overrides in `rank_pattern` / `alpha_pattern`. Our layers carry a fixed scaling `s`,
an allocation weight `w` and optional gates `g`; on export `g` folds into `lora_B` and `s * w`
into the layer's alpha, written to `alpha_pattern` where it differs from the global value.

Some servers read only `r` and `lora_alpha` and ignore the patterns. `fold_scaling=True`
writes a file for them: every layer zero-padded to the largest rank (zero components change
nothing), `s * w` folded into `lora_B`, and `lora_alpha = r`, so every scaling is exactly 1.
Layers of rank 0 are not adapted, so they are left out of the export.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dynalora.adapters.adapter_file import check_layers_exist
from dynalora.adapters.checks import check_tensors
from dynalora.adapters.config import LoraConfig
from dynalora.adapters.inject import pattern_value
from dynalora.adapters.layer import LoraAdapter
from dynalora.adapters.model_compat import task_heads
from dynalora.files import (
    AdapterFileError,
    atomic_dir,
    find_weights,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from dynalora.packaged import portable_name

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model"  # .safetensors
PREFIX = "base_model.model."

TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForCausalLM": "CAUSAL_LM",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "LMHeadModel": "CAUSAL_LM",  # GPT-2 style names
}


def task_type_of(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if name.endswith(suffix)), None)


def export_peft(path: str | Path, config: LoraConfig, adapters: dict[str, LoraAdapter], base_model: nn.Module,
                modules_to_save: list[str], fold_scaling: bool) -> None:
    """Write `adapters` (one adapter's modules, by layer name in `base_model`) as PEFT's
    adapter_config.json + adapter_model.safetensors; `modules_to_save` go in with them."""
    document, tensors = peft_document(config, adapters, base_model, modules_to_save, fold_scaling)
    with atomic_dir(path) as tmp:
        save_tensors(tmp / f"{PEFT_WEIGHTS}.safetensors", tensors, metadata={"format": "pt", "exported_by": "dynalora"})
        write_json(tmp / PEFT_CONFIG, document)


def peft_document(config: LoraConfig, adapters: dict[str, LoraAdapter], base_model: nn.Module,
                  modules_to_save: list[str], fold_scaling: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """PEFT's config document and tensors for one adapter (see the module doc)."""
    adapters = {n: a for n, a in adapters.items() if a.r > 0}
    if not adapters:
        raise ValueError("every layer of this adapter has rank 0: there is nothing to export")
    for name, adapter in adapters.items():
        if not adapter.mergeable:
            raise ValueError(
                f"{name}: input-conditional gates have no equivalent in PEFT's LoRA; "
                "this adapter cannot be exported"
            )
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    # Each layer's PEFT alpha: the one that reproduces our scaling s * w at its rank.
    root = (lambda r: r**0.5) if config.use_rslora else (lambda r: r)
    layer_alpha = {n: a.scaling * float(a.weight) * root(a.r) for n, a in adapters.items()}
    if fold_scaling:
        r = max(a.r for a in adapters.values())
        alpha = float(r)
    else:  # the most common rank and alpha go global; the rest into the patterns
        r = Counter(a.r for a in adapters.values()).most_common(1)[0][0]
        alpha = Counter(round(v, 6) for v in layer_alpha.values()).most_common(1)[0][0]
    with torch.no_grad():
        for name, a in adapters.items():
            A = a.lora_A.detach().float()
            B = a.lora_B.detach().float()
            if a.gate is not None:
                B = B * a.gate.detach().float()
            if fold_scaling:
                B = B * (a.scaling * float(a.weight))
                A = torch.cat([A, A.new_zeros(r - a.r, A.shape[1])])
                B = torch.cat([B, B.new_zeros(B.shape[0], r - a.r)], dim=1)
            else:
                if a.r != r:
                    rank_pattern[name] = a.r
                if not _close(layer_alpha[name], alpha):
                    alpha_pattern[name] = layer_alpha[name]
            tensors[f"{PREFIX}{name}.lora_A.weight"] = A.to(a.lora_A.dtype)
            tensors[f"{PREFIX}{name}.lora_B.weight"] = B.to(a.lora_B.dtype)
    saved_modules = modules_peft_saves(base_model, modules_to_save)
    for module_name in saved_modules:
        for key, value in base_model.get_submodule(module_name).state_dict().items():
            tensors[f"{PREFIX}{module_name}.{key}"] = value
    fan_in_fan_out = any(isinstance(base_model.get_submodule(n).base, Conv1D) for n in adapters)
    document = {
        "peft_type": "LORA",
        "task_type": task_type_of(base_model),
        # A packaged model's Hub id, not its path in this environment (dynalora.packaged).
        "base_model_name_or_path": portable_name(getattr(base_model, "name_or_path", None)),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "use_rslora": bool(config.use_rslora and not fold_scaling),
        "target_modules": sorted(adapters),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": saved_modules or None,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    return document, tensors


def modules_peft_saves(base_model: nn.Module, modules_to_save: list[str]) -> list[str]:
    """Our modules_to_save, plus the task head PEFT always loads for this kind of model.

    PEFT's classification models add "classifier"/"score" (QA: "qa_outputs") to
    modules_to_save themselves and then expect their weights in the file, even when we never
    trained the head; so the head we run with goes into the file in any case.
    """
    names = set(modules_to_save) | set(task_heads(base_model, task_type_of(base_model)))
    return sorted(n for n in names if not any(n.startswith(m + ".") for m in names))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1.0)


UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA bias terms",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
}


@dataclass
class PeftAdapter:
    """A PEFT LoRA adapter read as ours: what `DynaLoraModel.wrap_and_load` needs."""

    config: LoraConfig
    ranks: dict[str, int]
    scalings: dict[str, float]
    state: dict[str, torch.Tensor]  # our tensor names
    about: dict[str, Any]  # base model name and kind, for error messages


def import_peft(model: nn.Module, path: str | Path, allow_pickle: bool) -> PeftAdapter:
    """Rebuild a PEFT LoRA adapter as ours: ranks from the tensors, scalings from the alphas;
    checked against `model` (its base), which is not changed."""
    path = Path(path)
    if not (path / PEFT_CONFIG).is_file() and (path / "dynalora_config.json").is_file():
        raise AdapterFileError(f"{path} holds a dynalora adapter, not a PEFT one; load it with "
                               "DynaLoraModel.from_pretrained()")
    document = read_json(path / PEFT_CONFIG, "PEFT adapter config")
    peft_type = document.get("peft_type") if isinstance(document, dict) else None
    if peft_type != "LORA":
        raise AdapterFileError(f"{path}: PEFT type {peft_type!r} is not supported; only LORA adapters import")
    for key, what in UNSUPPORTED.items():
        if document.get(key):
            raise AdapterFileError(f"{path}: this adapter uses {what} ({key}), which dynalora does not support")
    if document.get("bias", "none") != "none":
        raise AdapterFileError(f"{path}: bias={document['bias']!r} (trained biases) is not supported; only bias='none'")
    weights = find_weights(path, PEFT_WEIGHTS)
    state = load_tensors(weights, allow_pickle)
    check_tensors(state, weights)
    lora: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", bare)
        if match:
            lora.setdefault(match.group(1), {})[match.group(2)] = value
        elif "lora_embedding" in bare or "lora_magnitude" in bare:
            raise AdapterFileError(f"{path}: tensor {key} is of a LoRA variant dynalora does not support")
        else:
            extra[bare] = value
    if not lora:
        raise AdapterFileError(f"{path}: no lora_A/lora_B tensors found")
    about = {"base_model": document.get("base_model_name_or_path"), "model_type": "PEFT"}
    check_layers_exist(model, lora, about)
    modules = {n for n, _ in model.named_modules()}
    saved_modules = sorted({k.rsplit(".", 1)[0] for k in extra})  # PEFT names them after the module
    unknown = [n for n in saved_modules if n not in modules]
    if unknown:
        raise AdapterFileError(f"{path}: tensors for module(s) this {type(model).__name__} does not have: {unknown[:3]}")
    rslora = bool(document.get("use_rslora"))
    global_alpha = float(document.get("lora_alpha", 8))
    ranks, scalings = {}, {}
    ours: dict[str, torch.Tensor] = {}
    for name, pair in lora.items():
        if set(pair) != {"A", "B"}:
            raise AdapterFileError(f"{path}: {name} has lora_{next(iter(pair))} without its partner")
        r = pair["A"].shape[0]
        alpha = float(pattern_value(name, document.get("alpha_pattern") or {}, global_alpha))
        ranks[name] = r
        scalings[name] = alpha / (r**0.5 if rslora else r)
        ours.update({f"{name}.lora_A": pair["A"], f"{name}.lora_B": pair["B"], f"{name}.weight": torch.ones(())})
    ours.update({f"modules_to_save.{key}": value for key, value in extra.items()})
    config = LoraConfig(
        r=int(document.get("r") or 8),
        alpha=global_alpha,
        dropout=float(document.get("lora_dropout") or 0.0),
        target_modules=sorted(lora),
        modules_to_save=saved_modules or None,
        use_rslora=rslora,
    )
    return PeftAdapter(config, ranks, scalings, ours, about)
