"""The built-in training methods (lora, dynamic, rank1, full, head, adapter, bitfit) and
the lookup of every registered one (PEFT's peft-lora and peft-adalora register from
dynalora.training.peft_methods, imported here).

A method takes the freshly built model and returns a `Prepared` (training/registry.py): the
model the loop calls, which parameters train, optional step hooks (training/hooks.py), and
how to save what was trained. `load` rebuilds a trained model from a saved run folder.
Adding a method is one prepare function, one load function and one `register_method` call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from dynalora.adapters import DynaLoraModel, LoraConfig
from dynalora.adapters.checks import check_tensors
from dynalora.errors import AdapterFileError, ConfigError
from dynalora.files import load_tensors, save_tensors
from dynalora.training import peft_methods  # noqa: F401  registers peft-lora and peft-adalora
from dynalora.training.classifier import SequenceClassifier
from dynalora.training.hooks import StepHook
from dynalora.training.optim import budget_horizon
from dynalora.training.registry import (
    HEAD_MODULE,
    METHODS,
    Method,
    Prepared,
    lora_config_for,
    register_method,
)

STATE_FILE = "trained_state.safetensors"
__all__ = ["HEAD_MODULE", "METHODS", "Method", "Prepared", "get_method", "known_methods", "lora_config_for",
           "register_method"]


def known_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method={name!r}: unknown; known methods: {known_methods()}")
    return METHODS[name]


# -- the LoRA family: our adapters, saved in the dynalora adapter format ------------------------
def _lora_prepared(classifier: SequenceClassifier, adapter_config: LoraConfig,
                   make_hooks: Callable[[Optimizer, int], list[Any]] | None = None) -> Prepared:
    wrapper = DynaLoraModel(classifier, adapter_config)
    prepared = Prepared(model=wrapper, classifier=classifier, wrapper=wrapper,
                        save=lambda folder, meta: wrapper.save_pretrained(folder, metadata=meta))
    if make_hooks is not None:
        prepared.make_hooks = make_hooks
    return prepared


def _load_lora(classifier: SequenceClassifier, folder: Path, metadata: dict[str, Any]) -> nn.Module:
    return DynaLoraModel.from_pretrained(classifier, folder)


def prepare_lora(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    return _lora_prepared(classifier, lora_config_for(config))


class AllocationHook(StepHook):
    """The allocation controller as a step hook, plus its report files at the end."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def loss_terms(self) -> Any:
        return self.controller.loss_terms()

    def after_optimizer_step(self, step: int) -> None:
        self.controller.after_optimizer_step(step)

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        """metrics.json's `allocation`: the controller's short account of the run."""
        return {"allocation": _jsonable(self.controller.summary())}

    def write_report(self, folder: Path) -> None:
        from dynalora.files import write_json

        self.controller.remove_hooks()
        write_json(folder / "allocation.json", _jsonable(self.controller.history))
        if self.controller.history:  # a run too short to reallocate has nothing to plot
            self.controller.plot(folder / "allocation.png")
        gates = {n: a.gate.detach().cpu().numpy() for n, a in self.controller.adapters.items()
                 if a.gate is not None and a.r}
        if gates:  # Rank-1 Sum LoRA: which rank-1 components kept weight, which were pruned
            from dynalora.training.report import gate_heatmap

            gate_heatmap(gates, folder / "gates.png", "Rank-1 Sum LoRA: |gate| per component after training")


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _prepare_allocating(config_class_name: str) -> Callable[[SequenceClassifier, Any, int], Prepared]:
    def prepare(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
        import dynalora.allocation as allocation

        adapter_config = lora_config_for(config, getattr(allocation, config_class_name))
        prepared = _lora_prepared(classifier, adapter_config)
        wrapper = prepared.wrapper
        # Same horizon as AdaLoRA's: with min_epochs the allocation is final before any
        # checkpoint can be chosen or the run can stop early.
        prepared.make_hooks = lambda optimizer, steps: [AllocationHook(allocation.AllocationController(
            wrapper, optimizer=optimizer, total_steps=budget_horizon(config, steps)))]
        return prepared

    return prepare


# -- methods that train parts of the model itself, saved as a plain tensor file ----------------
def _save_trainable(model: nn.Module, folder: Path) -> None:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {k: v for k, v in model.state_dict().items() if k in names}
    save_tensors(folder / STATE_FILE, state, metadata={"format": "dynalora-trained-state"})


def _load_trainable(model: nn.Module, folder: Path) -> nn.Module:
    state = load_tensors(folder / STATE_FILE)
    check_tensors(state, folder / STATE_FILE)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise AdapterFileError(f"{folder / STATE_FILE}: tensors {unexpected[:5]} do not fit this model")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise AdapterFileError(f"{folder / STATE_FILE}: {key} has shape {tuple(value.shape)}, "
                                   f"the model needs {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    return model


def _plain_prepared(classifier: SequenceClassifier, **kw: Any) -> Prepared:
    return Prepared(model=classifier, classifier=classifier,
                    save=lambda folder, meta: _save_trainable(classifier, folder), **kw)


def _freeze(model: nn.Module, keep: list[nn.Module]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for module in keep:
        for p in module.parameters():
            p.requires_grad_(True)


def prepare_full(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    for p in classifier.parameters():
        p.requires_grad_(True)
    return _plain_prepared(classifier)


def prepare_head(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    _freeze(classifier, [classifier.classifier])
    return _plain_prepared(classifier, cache_features=True)


def _houlsby_options(values: dict[str, Any]) -> dict[str, Any]:
    """Bottleneck size (default: the run's rank) and whether LayerNorms train, from a run's settings."""
    options = dict(values.get("method_options") or {})
    rank = values["rank"]
    unknown = sorted(set(options) - {"bottleneck", "train_layer_norm"})
    if unknown:
        raise ConfigError(f"method_options: {unknown} are not options of 'adapter' (bottleneck, train_layer_norm)")
    return {"bottleneck": int(options.get("bottleneck", rank)),
            "train_layer_norm": bool(options.get("train_layer_norm", True))}


def _add_houlsby(classifier: SequenceClassifier, options: dict[str, Any], targets: Any) -> list[nn.Module]:
    from dynalora.baselines import add_houlsby_adapters

    layers = add_houlsby_adapters(classifier.backbone, options["bottleneck"], targets)
    keep = [layer.adapter for layer in layers.values()] + [classifier.classifier]
    if options["train_layer_norm"]:  # as in Houlsby et al.: the layer norms train too
        keep += [m for m in classifier.backbone.modules() if isinstance(m, nn.LayerNorm)]
    return keep


def prepare_adapter(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    keep = _add_houlsby(classifier, _houlsby_options(config.to_dict()), config.target_modules)
    _freeze(classifier, keep)
    return _plain_prepared(classifier)


def _load_adapter(classifier: SequenceClassifier, folder: Path, metadata: dict[str, Any]) -> nn.Module:
    _add_houlsby(classifier, _houlsby_options(metadata), metadata.get("target_modules"))
    return _load_trainable(classifier, folder)


def prepare_bitfit(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    from dynalora.baselines import mark_only_biases_trainable

    mark_only_biases_trainable(classifier, keep=[classifier.classifier])
    return _plain_prepared(classifier)


def _load_plain(classifier: SequenceClassifier, folder: Path, metadata: dict[str, Any]) -> nn.Module:
    return _load_trainable(classifier, folder)


# Learning rates: lora's measured on MRPC with the packaged MiniLM (docs/results/defaults_sweep_mrpc.md);
# the others follow their papers' usual ranges for small encoders.
for _method in (
    Method("lora", 1e-3, prepare_lora, _load_lora, "LoRA on the query/value projections"),
    Method("dynamic", 1e-3, _prepare_allocating("DynamicLoraConfig"), _load_lora,
           "dynamic LoRA: importance-driven per-layer learning-rate weights and ranks within LoRA's "
           "parameter budget (input variance only with beta > 0; off by default)"),
    Method("rank1", 1e-3, _prepare_allocating("Rank1LoraConfig"), _load_lora,
           "Rank-1 Sum LoRA: gated rank-1 components, pruned to a budget"),
    Method("full", 5e-5, prepare_full, _load_plain, "full fine-tuning: every weight trains"),
    Method("head", 5e-3, prepare_head, _load_plain, "feature extraction: frozen backbone, head only"),
    Method("adapter", 1e-3, prepare_adapter, _load_adapter, "Houlsby bottleneck adapters", mergeable=False),
    Method("bitfit", 1e-3, prepare_bitfit, _load_plain, "BitFit: biases only"),
):
    register_method(_method)
