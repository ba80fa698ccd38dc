"""`DynaLoraModel`: a thin wrapper that owns the adapters of a transformers model.

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = get_lora_model(model, LoraConfig(r=8, modules_to_save=["classifier"]))
    ...train...
    lora.save_pretrained("out/")                       # our format (safetensors + JSON)
    lora.export_peft("out-peft/")                      # Hugging Face PEFT's format
    lora = DynaLoraModel.from_pretrained(base, "out/")  # back again
    lora.save_merged("merged/")                        # plain transformers checkpoint

This module keeps the adapters' bookkeeping and the forward pass; merging lives in
merging.py, our file format in adapter_file.py and PEFT's in peft_format.py, and the
methods here that reach them are thin delegates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters import merging
from dynalora.adapters.adapter_file import (  # noqa: F401  (CONFIG_FILE etc.: their old import path)
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_layers_exist,
    describe_base,
    few,
    layout_of,
    read_adapter,
    write_adapter,
)
from dynalora.adapters.checks import check_against_model
from dynalora.adapters.config import LoraConfig, config_from_dict
from dynalora.adapters.inject import inject_adapters, remove_layers, resolve_modules_to_save
from dynalora.adapters.layer import LoraAdapter, LoraLayer, per_row, pooling_mask
from dynalora.adapters.model_compat import TransformersCompat, task_heads, warn_if_head_frozen
from dynalora.adapters.peft_format import export_peft, import_peft
from dynalora.errors import AdapterFileError, ConfigError


class DynaLoraModel(TransformersCompat):
    """A transformers model with LoRA adapters injected; calls pass through to the model
    (`forward` shows the model's own signature; see model_compat for what Trainer relies on)."""

    def __init__(self, model: nn.Module, config: LoraConfig, adapter_name: str = "default",
                 ranks: dict[str, int] | None = None, scalings: dict[str, float] | None = None,
                 autocast_adapter_dtype: bool = True) -> None:
        if isinstance(model, DynaLoraModel) or any(isinstance(m, LoraLayer) for m in model.modules()):
            # Injecting again would replace the adapter already there, trained weights and all.
            raise ConfigError(f"this {type(model).__name__} already holds dynalora adapters: add another "
                              "with wrapper.add_adapter(name, config), or start from a fresh base model")
        super().__init__()
        self.base_model = model
        self.configs: dict[str, LoraConfig] = {}
        self._active: list[str] = []
        self.modules_to_save: list[str] = []
        self.add_adapter(adapter_name, config, ranks=ranks, scalings=scalings,
                         autocast_adapter_dtype=autocast_adapter_dtype)

    # -- passing through --------------------------------------------------------------------
    def call_base(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's call (what `forward` does)."""
        if all(c.gating != "input" for c in self.configs.values()):
            return self.base_model(*args, **kwargs)
        gated = [m for m in self.base_model.modules() if isinstance(m, LoraAdapter) and m.gate_proj is not None]
        # Input-conditional gates pool over tokens: tell them which are padding.
        mask = kwargs.get("attention_mask")
        with pooling_mask(gated, mask if isinstance(mask, torch.Tensor) else None):
            return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":  # not set yet: do not recurse
                raise
        try:
            return getattr(self.base_model, name)
        except AttributeError:
            raise AttributeError(f"neither {type(self).__name__} nor the {type(self.base_model).__name__} it wraps "
                                 f"has an attribute {name!r}") from None

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, name: str, config: LoraConfig, ranks: dict[str, int] | None = None,
                    scalings: dict[str, float] | None = None, autocast_adapter_dtype: bool = True) -> None:
        """Inject adapter `name`; base weights freeze, the adapter and modules_to_save train.

        autocast_adapter_dtype: as in PEFT, the adapter of a float16 / bfloat16 layer is kept in
        float32 (its small updates survive rounding; the layer casts its input and output), unless False."""
        if name in self.configs:
            raise ValueError(f"an adapter named {name!r} already exists")
        self.require_unmerged("adding an adapter")
        saved = self.saved_modules(config)  # checked first
        warn_if_head_frozen(self.base_model, [*self.modules_to_save, *saved])
        inject_adapters(self.base_model, config, name, ranks=ranks, scalings=scalings)
        if autocast_adapter_dtype:
            for layer in self.lora_layers().values():
                if name in layer.adapters and layer.adapters[name].lora_A.dtype in (torch.float16, torch.bfloat16):
                    layer.adapters[name].float()
        self.configs[name] = config
        self.modules_to_save = sorted(set(self.modules_to_save) | set(saved))
        self.set_adapter(name)
        self.set_trainable(name)

    def saved_modules(self, config: LoraConfig) -> list[str]:
        """Full names of the modules `config` trains in full: its modules_to_save and the head
        its task_type implies."""
        wanted = [*(config.modules_to_save or []), *task_heads(self.base_model, config.task_type)]
        return resolve_modules_to_save(self.base_model, wanted or None)

    def set_trainable(self, name: str | list[str] | None = None) -> None:
        """Only adapter(s) `name` (default: the active ones) and the modules_to_save train."""
        names = [name] if isinstance(name, str) else (name or self.active_adapters)
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        for adapter in (a for n in names for a in self.adapter_modules(n).values()):
            for p in adapter.parameters():
                p.requires_grad_(True)
        for module_name in self.modules_to_save:
            for p in self.base_model.get_submodule(module_name).parameters():
                p.requires_grad_(True)

    def lora_layers(self) -> dict[str, LoraLayer]:
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, LoraLayer)}

    def adapter_modules(self, name: str | None = None) -> dict[str, LoraAdapter]:
        """Adapter `name` (default: the active one) in each layer it touches, by layer name."""
        name = name or self.active_adapter
        return {n: layer.adapters[name] for n, layer in self.lora_layers().items() if name in layer.adapters}

    @property
    def active_adapter(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise RuntimeError(f"{len(active)} adapters are active ({active}); name one")
        return active[0]

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active)

    def set_adapter(self, names: str | list[str], weights: list[float] | None = None) -> None:
        """Activate one adapter, or several summed with `weights` (ranks may differ).

        As in PEFT, when an adapter is training the active ones become the ones that train
        (and the others freeze); a model whose adapters are all frozen (loaded for
        inference) stays frozen."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            raise KeyError(f"unknown adapter(s) {unknown}; loaded: {sorted(self.configs)}")
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"{len(weights)} weights for {len(names)} adapters")
        self.require_unmerged("switching adapters")
        training = any(p.requires_grad for layer in self.lora_layers().values() for p in layer.adapters.parameters())
        for layer in self.lora_layers().values():
            layer.active = [n for n in names if n in layer.adapters]
            layer.mix = dict(zip(names, weights)) if weights is not None else {}
        self._active = names
        if training:
            self.set_trainable(names)

    def delete_adapter(self, name: str) -> None:
        if name not in self.configs:
            raise KeyError(f"unknown adapter {name!r}; loaded: {sorted(self.configs)}")
        self.require_unmerged("deleting an adapter")
        for layer in self.lora_layers().values():
            if name in layer.adapters:
                del layer.adapters[name]
            layer.active = [n for n in layer.active if n != name]
        del self.configs[name]
        self._active = [n for n in self._active if n != name]
        self.modules_to_save = sorted({m for config in self.configs.values() for m in self.saved_modules(config)})

    def _discard(self, name: str) -> None:
        """Undo a failed load of adapter `name`: the model is left as it was before."""
        if name in self.configs:
            self.delete_adapter(name)
        remove_layers(self.base_model, empty_only=True)

    def require_unmerged(self, action: str) -> None:
        if any(layer.merged for layer in self.lora_layers().values()):
            raise RuntimeError(f"{action} needs the adapters unmerged: call unmerge() first")

    @contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Run the base model alone inside the block."""
        self.require_unmerged("disabling the adapters")
        layers = list(self.lora_layers().values())
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False

    @contextmanager
    def per_row_adapters(self, names: list[str | None]) -> Iterator[None]:
        """Row i of the batch goes through adapter `names[i]` (None: the base model)."""
        unknown = sorted({n for n in names if n is not None} - set(self.configs))
        if unknown:
            raise KeyError(f"unknown adapter(s) {unknown}; loaded: {sorted(self.configs)}")
        with per_row(list(self.lora_layers().values()), names):
            yield

    # -- counting ---------------------------------------------------------------------------
    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts; total counts the base model and adapters."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def ranks(self, name: str | None = None) -> dict[str, int]:
        return {n: a.r for n, a in self.adapter_modules(name).items()}

    # -- merging (adapters/merging.py) ------------------------------------------------------
    def check_mergeable(self) -> None:
        """Raise if an active adapter cannot be folded into the base weights."""
        merging.check_mergeable(self.lora_layers().values())

    def merge(self) -> None:
        """Fold the active adapters into the base weights (zero added latency)."""
        self.check_mergeable()  # everything checked before anything changes
        for layer in self.lora_layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.lora_layers().values():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters and return the plain base model (the wrapper is spent)."""
        self.merge()
        remove_layers(self.base_model)
        return self.base_model

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's own state dict (its key names) with the active adapters folded in;
        the model itself is left untouched."""
        return merging.merged_state_dict(self.base_model, self.lora_layers())

    def save_merged(self, path: str | Path) -> None:
        """A plain transformers checkpoint: loads with `AutoModel...from_pretrained`, no dynalora."""
        merging.save_merged(self.base_model, self.merged_state_dict(), path, getattr(self, "tokenizer", None))

    # -- saving and loading (our format) ----------------------------------------------------
    def adapter_state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        name = name or self.active_adapter
        state = {}
        for layer_name, adapter in self.adapter_modules(name).items():
            for key, value in adapter.state_dict().items():
                state[f"{layer_name}.{key}"] = value
        for module_name in self.modules_to_save:
            for key, value in self.base_model.get_submodule(module_name).state_dict().items():
                state[f"modules_to_save.{module_name}.{key}"] = value
        return state

    def save_pretrained(self, path: str | Path, adapter_name: str | None = None,
                        metadata: dict[str, Any] | None = None) -> None:
        """Write `dynalora_config.json` and `dynalora_adapter.safetensors`, atomically."""
        name = adapter_name or self.active_adapter
        write_adapter(path, self.configs[name], self.adapter_modules(name), self.base_model, self.modules_to_save,
                      self.adapter_state_dict(name), metadata)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path, adapter_name: str = "default",
                        is_trainable: bool = False, allow_pickle: bool = False) -> DynaLoraModel:
        """Load an adapter saved by `save_pretrained` onto `model` (its base).

        If the adapter does not fit, the error says why and `model` is left as it was.
        """
        document, state = read_adapter(path, allow_pickle)
        check_against_model(model, document, state, path)
        config, ranks, scalings = layout_of(document)
        check_layers_exist(model, ranks, document)
        wrapper = cls.wrap_and_load(model, config, adapter_name, ranks, scalings, state, document,
                                    is_trainable)
        wrapper.configs[adapter_name] = config_from_dict(document["config"])  # as saved, not as re-created
        wrapper.metadata = document.get("metadata", {})
        return wrapper

    @classmethod
    def wrap_and_load(cls, model: nn.Module, config: LoraConfig, adapter_name: str,
                      ranks: dict[str, int], scalings: dict[str, float], state: dict[str, torch.Tensor],
                      document: dict[str, Any], is_trainable: bool) -> DynaLoraModel:
        """Wrap `model` with a new adapter and copy `state` into it; if that fails, `model` is
        left as it was (no layers swapped, same parameters training)."""
        trainable = {p: p.requires_grad for p in model.parameters()}
        wrapper = cls(model, config, adapter_name, ranks=ranks, scalings=scalings)
        try:
            wrapper.load_state(adapter_name, state, document)
        except Exception:
            wrapper._discard(adapter_name)
            for p, flag in trainable.items():
                p.requires_grad_(flag)
            raise
        if not is_trainable:
            for p in wrapper.parameters():
                p.requires_grad_(False)
        return wrapper

    def load_adapter(self, path: str | Path, adapter_name: str, allow_pickle: bool = False) -> None:
        """Load another saved adapter beside the ones present (multi-adapter serving).

        The active adapters and what trains stay as they were; the new one is frozen.
        """
        document, state = read_adapter(path, allow_pickle)
        check_against_model(self.base_model, document, state, path)
        config, ranks, scalings = layout_of(document)
        check_layers_exist(self.base_model, ranks, document)
        self.check_shared_modules(state, path)
        active = self.active_adapters
        trainable = {p: p.requires_grad for p in self.parameters()}
        self.add_adapter(adapter_name, config, ranks=ranks, scalings=scalings)
        try:
            self.load_state(adapter_name, state, document)
            self.configs[adapter_name] = config_from_dict(document["config"])
        except Exception:
            self._discard(adapter_name)
            raise
        finally:
            self.set_adapter(active)
            for p in self.parameters():
                p.requires_grad_(trainable.get(p, False))

    def check_shared_modules(self, state: dict[str, torch.Tensor], path: str | Path) -> None:
        """modules_to_save live in the base model, shared by all its adapters: loading a second
        adapter with a different classifier head would silently change the first one's."""
        present = self.base_model.state_dict()
        for key, value in state.items():
            own = key.removeprefix("modules_to_save.")
            shared = own != key and own in present and any(own.startswith(m + ".") for m in self.modules_to_save)
            if shared and not torch.equal(present[own].cpu(), value.to(present[own].dtype)):
                raise AdapterFileError(
                        f"{path}: its {own} differs from the one the loaded adapter(s) "
                        f"{sorted(self.configs)} use; modules_to_save are shared by all adapters "
                        "of one model, so load this adapter into a separate model"
                    )

    def load_state(self, name: str, state: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
        """Copy saved tensors in, checking every name and shape against this model first."""
        expected = dict(self.adapter_state_dict(name))
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise AdapterFileError(
                f"adapter file does not fit this {type(self.base_model).__name__} (saved for "
                f"{describe_base(document)}): missing {few(missing)}, unexpected {few(unexpected)}"
            )
        for key, target in expected.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise AdapterFileError(
                    f"shape mismatch for {key}: the file has {tuple(state[key].shape)}, this "
                    f"{type(self.base_model).__name__} needs {tuple(target.shape)}; the adapter was "
                    f"saved for a different base model ({describe_base(document)})"
                )
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(state[key].to(target.dtype))

    # -- Hugging Face PEFT's format -----------------------------------------------------------
    def export_peft(self, path: str | Path, adapter_name: str | None = None,
                    fold_scaling: bool = False) -> None:
        """Write `adapter_config.json` + `adapter_model.safetensors` that PEFT loads."""
        name = adapter_name or self.active_adapter
        export_peft(path, self.configs[name], self.adapter_modules(name), self.base_model, self.modules_to_save,
                    fold_scaling)

    @classmethod
    def from_peft(cls, model: nn.Module, path: str | Path, adapter_name: str = "default",
                  is_trainable: bool = False, allow_pickle: bool = False) -> DynaLoraModel:
        """Load an adapter saved by Hugging Face PEFT (LoRA) onto `model`."""
        peft = import_peft(model, path, allow_pickle)
        return cls.wrap_and_load(model, peft.config, adapter_name, peft.ranks, peft.scalings, peft.state,
                                 peft.about, is_trainable)


def get_lora_model(model: nn.Module, config: LoraConfig, adapter_name: str = "default",
                   autocast_adapter_dtype: bool = True) -> DynaLoraModel:
    """Inject `config`'s adapters into `model` (in place) and return the wrapper; adapters of
    half-precision layers are kept in float32 unless `autocast_adapter_dtype=False` (as in PEFT)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch module (a transformers model), not {type(model).__name__}")
    if not isinstance(config, LoraConfig):
        raise ConfigError(f"config must be a LoraConfig, DynamicLoraConfig or Rank1LoraConfig, not "
                          f"{type(config).__name__}: build one with LoraConfig(**values)")
    return DynaLoraModel(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
