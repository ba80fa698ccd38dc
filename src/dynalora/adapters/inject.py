"""Finding modules by name and swapping them for LoRA layers."""

from __future__ import annotations

import re
import warnings

from torch import nn

from dynalora.adapters.config import DEFAULT_TARGETS, ConfigError, LoraConfig
from dynalora.adapters.layer import SUPPORTED_BASE_TYPES, LoraAdapter, LoraLayer, base_shape
from dynalora.errors import TargetError

# Output heads are never adapted by "all-linear": they are trained in full or left alone.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls", "pooler")


def name_matches(name: str, pattern: list[str] | str) -> bool:
    """List entries match the full name or a dotted suffix; a string is a full regex."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def pattern_value(name: str, patterns: dict[str, object], default: object) -> object:
    """The value of the first key that matches `name`, else `default`.

    PEFT's rule for rank_pattern / alpha_pattern, so a config means the same in both: the key
    is a regex that must match the whole name or a dotted suffix of it ("query" matches
    "bert.encoder.layer.0.attention.self.query", and so does "layer\\.0\\..*query").
    """
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of adaptable layers: linear ones, and ones already wrapped (not their insides)."""
    inside = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    return [
        n for n, m in model.named_modules()
        if isinstance(m, (*SUPPORTED_BASE_TYPES, LoraLayer)) and not any(n.startswith(w + ".") for w in inside)
    ]


def _short_names(names: list[str]) -> list[str]:
    """Module names without their layer index prefix, for readable error messages."""
    shorts = {re.sub(r"^.*?\.\d+\.", "", n) for n in names}
    return sorted(shorts)


def _output_layer_names(model: nn.Module) -> list[str]:
    """The module the model uses as its output embedding (an LM head under any name)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return [n for n, m in model.named_modules() if head is not None and m is head]


def resolve_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Full names of the modules to adapt, or a TargetError listing the ones that exist."""
    targets = config.target_modules
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise TargetError(
                f"no default target modules for model type {model_type!r}; pass target_modules "
                f"(one of these names, a regex, or 'all-linear'): {_short_names(linear_module_names(model))}"
            )
        targets = DEFAULT_TARGETS[model_type]
    linear = linear_module_names(model)
    if targets == "all-linear":
        heads = set(_output_layer_names(model))
        chosen = [n for n in linear if n not in heads and not set(n.split(".")) & set(HEAD_NAMES)]
    else:
        chosen = [n for n in linear if name_matches(n, targets)]
        if isinstance(targets, list):
            missing = [t for t in targets if not any(name_matches(n, [t]) for n in linear)]
            if missing:
                raise TargetError(
                    f"target module(s) {missing} match no linear layer in {type(model).__name__}; "
                    f"linear layers are named: {_short_names(linear)}"
                )
    if config.exclude_modules:
        excluded = config.exclude_modules
        if isinstance(excluded, list):
            idle = [e for e in excluded if not any(name_matches(n, [e]) for n in chosen)]
            if idle:
                warnings.warn(f"exclude_modules {idle} exclude none of the targeted layers (a typo?); "
                              f"targeted: {_short_names(chosen)}", UserWarning, stacklevel=4)
        chosen = [n for n in chosen if not name_matches(n, excluded)]
    if not chosen:
        raise TargetError(
            f"target_modules={targets!r} matches no linear layer in {type(model).__name__}; "
            f"linear layers are named: {_short_names(linear)}"
        )
    return chosen


def resolve_modules_to_save(model: nn.Module, patterns: list[str] | None) -> list[str]:
    """Full names of the modules trained in full; a pattern matching nothing is an error."""
    if not patterns:
        return []
    names = [n for n, _ in model.named_modules() if n]
    chosen = [n for n in names if name_matches(n, patterns)]
    # Keep only the outermost match (saving `classifier` covers `classifier.dense`).
    chosen = [n for n in chosen if not any(n.startswith(c + ".") for c in chosen if c != n)]
    missing = [p for p in patterns if not any(name_matches(n, [p]) for n in names)]
    if missing:
        top = sorted({n.split(".")[0] for n in names} | {n for n in names if n.count(".") == 1})
        raise TargetError(f"modules_to_save {missing} match no module; top-level modules: {top}")
    return chosen


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, config: LoraConfig, adapter_name: str = "default",
                    ranks: dict[str, int] | None = None,
                    scalings: dict[str, float] | None = None) -> dict[str, LoraLayer]:
    """Add adapter `adapter_name` to every target module, wrapping it in a LoraLayer if needed.

    `ranks` / `scalings` (from a saved adapter) override what the config would choose.
    Returns the LoRA layers by full module name. Does not change which parameters train.
    """
    layers: dict[str, LoraLayer] = {}
    targets = resolve_targets(model, config)
    planned = {name: ranks[name] if ranks and name in ranks else int(pattern_value(name, config.rank_pattern, config.r))
               for name in targets}
    check_ranks_fit(model, planned)  # before anything is allocated or swapped
    for name in targets:
        module = model.get_submodule(name)
        if not isinstance(module, LoraLayer):
            module = LoraLayer(module)
            _set_submodule(model, name, module)
        r = planned[name]
        if scalings and name in scalings:
            scaling = scalings[name]
        else:
            alpha = float(pattern_value(name, config.alpha_pattern, config.alpha))
            scaling = config.scaling_for(int(pattern_value(name, config.rank_pattern, config.r)), alpha)
        out_f, in_f = base_shape(module.base)
        adapter = LoraAdapter(in_f, out_f, r, scaling, config.dropout, config.init, config.gating)
        adapter.to(dtype=module.base.weight.dtype if module.base.weight.is_floating_point() else None)
        module.add_adapter(adapter_name, adapter)
        layers[name] = module
    return layers


def check_ranks_fit(model: nn.Module, ranks: dict[str, int]) -> None:
    """A rank above the layer's larger side is no low-rank update (and may not fit in memory)."""
    for name, r in ranks.items():
        module = model.get_submodule(name)
        base = module.base if isinstance(module, LoraLayer) else module
        if not isinstance(base, SUPPORTED_BASE_TYPES):
            continue  # LoraLayer says why it cannot wrap it
        out_f, in_f = base_shape(base)
        if r > max(in_f, out_f):
            raise ConfigError(f"rank={r}: more than the size of layer {name} ({in_f} -> {out_f}); "
                              f"use a rank of at most {min(in_f, out_f)}")


def remove_layers(model: nn.Module, empty_only: bool = False) -> None:
    """Put the base modules back in place of every LoraLayer (merging nothing), or only of
    those that hold no adapter any more."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and not (empty_only and len(module.adapters)):
            _set_submodule(model, name, module.base)
