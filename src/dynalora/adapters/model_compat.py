"""What transformers' `Trainer` and PEFT users expect of a wrapped model, as a mixin of `DynaLoraModel`.

- The forward signature: `Trainer` keeps the dataset columns the model's `forward` names and
  finds the label columns in the forward of the model's *class*. `DynaLoraModel.forward`
  therefore shows the wrapped model's own signature on an instance and names `labels` on
  the class, so a plain `Trainer` keeps `input_ids`/`label`, computes `eval_loss` and calls
  `compute_metrics` with default `TrainingArguments`.
- The state dict: `Trainer` saves `model.state_dict()` for a model that is not a
  `PreTrainedModel`. Ours holds the adapters (with their allocation weights and gates) and
  the modules to save, the frozen base weights left out (they are the base model's, whose
  files the user already has), so a checkpoint holds only what training changed;
  `load_state_dict` takes such a dict back, strict about those keys only.
- PEFT's names: `print_trainable_parameters()` (PEFT's exact line), `get_nb_trainable_parameters()`,
  `peft_config`, `get_base_model()`, `disable_adapter()`, `unload()`, and the task head each
  PEFT `task_type` trains (`task_heads`).
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from dynalora.adapters.inject import remove_layers
from dynalora.errors import AdapterFileError

# The heads PEFT trains for each task type (its modules_to_save): found by their last name.
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
    "CAUSAL_LM": (),
    "SEQ_2_SEQ_LM": (),
    "FEATURE_EXTRACTION": (),
}
# Model classes whose task head starts untrained: without it in modules_to_save, it stays random.
HEADED_CLASSES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def task_heads(model: nn.Module, task_type: str | None) -> list[str]:
    """The modules of `model` that PEFT's `task_type` would train beside the adapters."""
    names = TASK_HEADS.get(task_type or "", ())
    return [n for n, _ in model.named_modules() if n and n.split(".")[-1] in names]


def warn_if_head_frozen(model: nn.Module, saved: list[str]) -> None:
    """A freshly initialised classification head that nothing trains is a silent failure: say so."""
    kind = type(model).__name__
    if not kind.endswith(HEADED_CLASSES):
        return
    heads = task_heads(model, "QUESTION_ANS" if kind.endswith("ForQuestionAnswering") else "SEQ_CLS")
    frozen = [h for h in heads if not any(h == s or h.startswith(s + ".") for s in saved)]
    if frozen:
        warnings.warn(f"{kind}'s task head {frozen} stays frozen: pass task_type='SEQ_CLS' (or "
                      f"modules_to_save={frozen}) to train it with the adapter", UserWarning, stacklevel=4)


def _labelled_forward(self: Any, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
    """The class-level face of `DynaLoraModel.forward` (what `Trainer` reads for label names)."""
    if labels is not None:
        kwargs["labels"] = labels
    return self.call_base(*args, **kwargs)


class _WrappedForward:
    """`wrapper.forward` on an instance: calls the wrapped model; reports its signature."""

    def __init__(self, wrapper: nn.Module) -> None:
        self.wrapper = wrapper

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.wrapper.base_model.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapper.call_base(*args, **kwargs)


class BaseForward:
    """A descriptor: the class attribute is `_labelled_forward`, an instance's is `_WrappedForward`."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return _labelled_forward if instance is None else _WrappedForward(instance)


class TransformersCompat(nn.Module):
    """The Trainer/PEFT-facing part of `DynaLoraModel` (see the module doc)."""

    forward = BaseForward()  # type: ignore[assignment]

    def call_base(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped model (a subclass may set per-call context around it)."""
        return self.base_model(*args, **kwargs)

    def _kept_in_state(self, key: str, prefix: str = "") -> bool:
        """An adapter tensor, or one of a module to save; `key` as in state_dict (with `prefix`)."""
        inner = key.removeprefix(prefix).removeprefix("base_model.")
        if ".adapters." in inner:
            return True
        return any(inner.startswith(m + ".") for m in getattr(self, "modules_to_save", []))

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        kept = OrderedDict((k, v) for k, v in full.items() if self._kept_in_state(k, prefix))
        if destination is None:
            return kept
        destination.update(kept)
        return destination

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        own = self.state_dict()
        for key, value in state_dict.items():
            if ".adapters." in key and key in own and tuple(value.shape) != tuple(own[key].shape):
                # A Trainer resuming a dynamic / rank1 run: the checkpoint has the resized ranks.
                raise AdapterFileError(
                    f"the checkpoint's {key} has shape {tuple(value.shape)}, this model's {tuple(own[key].shape)}: "
                    "allocation resized the adapters after the model was built; restore the ranks first with "
                    "DynamicLoraCallback.load_checkpoint(checkpoint_folder) (or controller.load_state_dict) "
                    "before trainer.train(resume_from_checkpoint=...)")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if self._kept_in_state(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"state dict does not fit this {type(self).__name__}: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return torch.nn.modules.module._IncompatibleKeys(missing, result.unexpected_keys)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts, as PEFT names it."""
        return self.parameter_counts()  # type: ignore[attr-defined]

    def print_trainable_parameters(self) -> None:
        """PEFT's line, word for word (scripts parse it)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}")

    @property
    def peft_config(self) -> dict[str, Any]:
        """The adapter configs by name (ours: `configs`), under PEFT's name."""
        return self.configs  # type: ignore[attr-defined]

    def get_base_model(self) -> nn.Module:
        """The wrapped model, adapters still injected (PEFT's name)."""
        return self.base_model  # type: ignore[attr-defined]

    def disable_adapter(self) -> Any:
        """PEFT's (and TRL's) name for `disable_adapters()`: a block that runs the base model alone."""
        return self.disable_adapters()  # type: ignore[attr-defined]

    def unload(self) -> nn.Module:
        """Remove every adapter without merging and return the plain base model, as it was
        before `get_lora_model` (merged adapters are unmerged first); the wrapper is spent."""
        self.unmerge()  # type: ignore[attr-defined]
        remove_layers(self.base_model)  # type: ignore[attr-defined]
        return self.base_model  # type: ignore[attr-defined]
