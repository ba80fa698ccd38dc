"""Our adapter file format: `dynalora_config.json` + `dynalora_adapter.safetensors`.

The JSON document records the adapter config, each adapted layer's rank, scaling and
allocation weight, the modules saved with it, and free-form run metadata. The config's
`rank_pattern` is rewritten from the tensors at save time, so the ranks a saved config states
are the ranks the adapter has (dynamic allocation resizes layers during training).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora import files
from dynalora.adapters.checks import check_layer_entries, check_tensors
from dynalora.adapters.config import LoraConfig, config_from_dict
from dynalora.adapters.inject import pattern_value
from dynalora.adapters.layer import LoraAdapter
from dynalora.errors import AdapterFileError
from dynalora.runs.publish import results_folder

CONFIG_FILE = "dynalora_config.json"
WEIGHTS_FILE = "dynalora_adapter"  # .safetensors
FORMAT = "dynalora-adapter"
FORMAT_VERSION = 1


def saved_config(config: LoraConfig, adapters: dict[str, LoraAdapter]) -> LoraConfig:
    """`config` with the user's `rank_pattern` kept and, in front of it (the first matching key
    wins), an exact entry (the layer's full name, escaped) for every layer whose actual rank
    differs from what the pattern gives: a layer that dynamic allocation resized."""
    resized = {re.escape(name): adapter.r for name, adapter in adapters.items()
               if adapter.r != pattern_value(name, config.rank_pattern, config.r)}
    return config.replace(rank_pattern={**resized, **{k: v for k, v in config.rank_pattern.items() if k not in resized}})


def write_adapter(path: str | Path, config: LoraConfig, adapters: dict[str, LoraAdapter], base_model: nn.Module,
                  modules_to_save: list[str], state: dict[str, torch.Tensor],
                  metadata: dict[str, Any] | None = None) -> None:
    """Write one adapter (its modules by layer name, its tensors `state`) atomically."""
    layers = {
        n: {"r": a.r, "scaling": a.scaling, "weight": float(a.weight), "in": a.in_features, "out": a.out_features}
        for n, a in adapters.items()
    }
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base_model": getattr(base_model, "name_or_path", None) or None,
        "model_type": getattr(getattr(base_model, "config", None), "model_type", None),
        "config": saved_config(config, adapters).to_dict(),
        "layers": layers,
        "modules_to_save": modules_to_save,
        "metadata": metadata or {},
    }
    with files.atomic_dir(path) as tmp:
        files.save_tensors(tmp / f"{WEIGHTS_FILE}.safetensors", state, metadata={"format": FORMAT})
        files.write_json(tmp / CONFIG_FILE, document)


def read_adapter(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our JSON document and tensors from an adapter folder (or a run folder's `best/`), with
    clear errors; see `checks` for what is verified before anything is built from them."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterFileError(f"adapter folder not found: {path}")
    path = results_folder(path)
    if not (path / CONFIG_FILE).is_file() and (path / "adapter_config.json").is_file():
        raise AdapterFileError(
            f"{path} holds a Hugging Face PEFT adapter; load it with DynaLoraModel.from_peft()"
        )
    document = files.read_json(path / CONFIG_FILE, "adapter config")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise AdapterFileError(f"{path / CONFIG_FILE}: not a dynalora adapter config")
    absent = [key for key in ("config", "layers") if not isinstance(document.get(key), dict)]
    if absent:
        raise AdapterFileError(f"{path / CONFIG_FILE}: the field(s) {absent} are missing or not objects")
    if document.get("version", 0) > FORMAT_VERSION:
        raise AdapterFileError(
            f"{path}: adapter format version {document['version']} is newer than this dynalora "
            f"reads ({FORMAT_VERSION}); upgrade dynalora"
        )
    check_layer_entries(document, path / CONFIG_FILE)
    weights = files.find_weights(path, WEIGHTS_FILE)
    state = files.load_tensors(weights, allow_pickle)
    check_tensors(state, weights)
    return document, state


def layout_of(document: dict[str, Any]) -> tuple[LoraConfig, dict[str, int], dict[str, float]]:
    """The config that re-creates a saved adapter's layers (its targets: their exact names),
    and their ranks and scalings. The config as saved is `config_from_dict(document["config"])`."""
    config = config_from_dict(document["config"])
    ranks = {n: int(v["r"]) for n, v in document["layers"].items()}
    scalings = {n: float(v["scaling"]) for n, v in document["layers"].items()}
    # Re-create exactly the saved layers, whatever the config's patterns would pick today.
    return config.replace(target_modules=sorted(ranks), exclude_modules=None), ranks, scalings


def describe_base(document: dict[str, Any]) -> str:
    name, kind = document.get("base_model"), document.get("model_type")
    return f"base {name!r} ({kind})" if name else f"an unnamed {kind or 'unknown'} model"


def few(keys: list[str]) -> str:
    """At most five of `keys`, for an error message."""
    return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"


def check_layers_exist(model: nn.Module, ranks: dict[str, int], document: dict[str, Any]) -> None:
    names = {n for n, _ in model.named_modules()}
    absent = sorted(n for n in ranks if n not in names)
    if absent:
        raise AdapterFileError(
            f"the adapter adapts {len(absent)} module(s) this {type(model).__name__} does not "
            f"have, e.g. {absent[:3]}; it was saved for {describe_base(document)}"
        )
