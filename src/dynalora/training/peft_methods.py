"""Hugging Face PEFT's LoRA and AdaLoRA as training methods, for side-by-side comparisons.

Both wrap the same `SequenceClassifier` (mean-pooling head) as our own methods, adapt exactly
the modules our LoRA would adapt (resolved by our own target rules, then handed to PEFT as
full names), train the head as a module to save, and are saved in PEFT's own format.

peft-lora:    `peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout)`.
peft-adalora: `peft.AdaLoraConfig` with `target_r = rank`, so that after its final mask the
              number of live rank-1 triplets equals uniform LoRA at `rank` (our budget), and
              `init_r = ceil(1.5 * rank)` (AdaLoRA's paper starts 1.5x above the target).
              The schedule follows the run length like our dynamic LoRA's: warm-up
              `tinit` = 10% of the steps, ranks final for the last `tfinal` = 30%, a
              reallocation every `deltaT` steps (about 20 in between); with `min_epochs`
              the schedule spans those epochs only. `orth_reg_weight` 0.1 (PEFT: 0.5), and
              no weight decay on the singular values `E` (see `param_groups`).
              Equal triplet counts are not equal parameter counts when layer shapes differ
              (all-linear: an FFN triplet costs 2.5x an attention one), so the bench records
              each run's final live count (`adapter_params`, `budget_vs_lora`).
              `update_and_allocate` runs in the step hook after `optimizer.step()` and before `zero_grad()` (it
              reads the gradients). AdaLoRA's orthogonality penalty is normally added by its
              `forward` only when the model returns a `.loss`; our classifier returns logits,
              so the hook adds it through `loss_terms()` instead.
`method_options` go to the PEFT config (e.g. `orth_reg_weight=0.1`, `init_r=16`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters.config import ConfigError
from dynalora.adapters.inject import resolve_targets
from dynalora.files import atomic_dir, write_json
from dynalora.training.classifier import SequenceClassifier
from dynalora.training.optim import budget_horizon
from dynalora.training.registry import (
    HEAD_MODULE,
    Method,
    Prepared,
    lora_config_for,
    register_method,
)

WARMUP_FRACTION, FINAL_FRACTION, REALLOCATIONS = 0.10, 0.30, 20
ORTH_REG_WEIGHT = 0.1  # PEFT's default 0.5 dominates a small classifier's loss early on


def peft_targets(classifier: SequenceClassifier, config: Any) -> list[str]:
    """The full module names our LoRA adapts for this run (same rules, same defaults). The run's
    method_options are PEFT's (tinit, init_r, ...), not our LoRA's, so they are left out here."""
    targets_only = dataclasses.replace(config, method_options={})
    return resolve_targets(classifier, lora_config_for(targets_only).replace(modules_to_save=None))


def _peft_config(cls: type, options: dict[str, Any], **fields: Any) -> Any:
    try:
        return cls(**{**fields, **options})
    except TypeError as err:
        raise ConfigError(f"method_options: {err} (not an option of peft.{cls.__name__})") from None


def _save_peft(peft_model: nn.Module, folder: Path) -> None:
    """PEFT's own files (adapter_config.json, adapter_model.safetensors), swapped in atomically."""
    with atomic_dir(folder) as tmp:
        peft_model.save_pretrained(str(tmp))


def _prepared(peft_model: nn.Module, classifier: SequenceClassifier, **kw: Any) -> Prepared:
    return Prepared(model=peft_model, classifier=classifier,
                    save=lambda folder, meta: _save_peft(peft_model, folder), **kw)


def prepare_peft_lora(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = _peft_config(PeftLoraConfig, config.method_options, r=config.rank, lora_alpha=config.alpha,
                               lora_dropout=config.dropout, target_modules=peft_targets(classifier, config),
                               modules_to_save=[HEAD_MODULE])
    return _prepared(get_peft_model(classifier, peft_config), classifier)


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """tinit / tfinal / deltaT for a schedule of `total_steps` optimizer steps (PEFT needs a budgeting phase)."""
    if total_steps < 3:
        raise ConfigError(f"peft-adalora needs at least 3 optimizer steps to schedule its budget, got {total_steps}")
    tinit = max(1, round(WARMUP_FRACTION * total_steps))
    tfinal = max(1, round(FINAL_FRACTION * total_steps))
    if tinit + tfinal >= total_steps:
        tinit, tfinal = 0, 1
    delta_t = max(1, (total_steps - tinit - tfinal) // REALLOCATIONS)
    return {"total_step": total_steps, "tinit": tinit, "tfinal": tfinal, "deltaT": delta_t}


def adalora_ranks(peft_model: nn.Module) -> dict[str, int]:
    """Live rank per adapted module: the number of non-zero singular values (lora_E)."""
    return {
        name.replace(".lora_E.default", ""): int((param != 0).sum())
        for name, param in peft_model.named_parameters() if ".lora_E." in name
    }


class AdaLoraHook:
    """PEFT AdaLoRA's budget allocation and orthogonality penalty in our step protocol."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model
        self.config = peft_model.peft_config["default"]
        self.history: list[dict[str, Any]] = []
        # (is_A, parameter): A is r x in (rows orthonormal), B is out x r (columns orthonormal).
        self.factors = [(".lora_A." in n, p) for n, p in peft_model.named_parameters()
                        if ".lora_A." in n or ".lora_B." in n]

    def loss_terms(self) -> torch.Tensor:
        """orth_reg_weight * mean over A and B of ||P P^T - I||_F (A: rows, B: columns)."""
        terms = []
        for is_a, p in self.factors:
            gram = p @ p.T if is_a else p.T @ p
            terms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=p.dtype, device=p.device)))
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def after_optimizer_step(self, step: int) -> None:
        self.peft_model.base_model.update_and_allocate(step)
        ranks = adalora_ranks(self.peft_model)
        if not self.history or self.history[-1]["ranks"] != ranks:
            self.history.append({"step": step, "ranks": ranks})

    def state_dict(self) -> dict[str, Any]:
        """PEFT keeps AdaLoRA's sensitivity averages and its final rank pattern outside the model;
        without them a resumed run would budget from fresh scores, or (past the final
        allocation) crash on a rank pattern of None."""
        allocator = self.peft_model.base_model.rankallocator
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": self.config.rank_pattern, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        allocator = self.peft_model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
            dict(state["ipt"]), dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"]))
        self.config.rank_pattern = state["rank_pattern"]
        self.history = list(state["history"])

    def write_report(self, folder: Path) -> None:
        write_json(Path(folder) / "adalora_ranks.json", {"schedule": {
            k: getattr(self.config, k) for k in ("init_r", "target_r", "total_step", "tinit", "tfinal", "deltaT")
        }, "history": self.history})


def prepare_peft_adalora(classifier: SequenceClassifier, config: Any, total_steps: int) -> Prepared:
    from peft import AdaLoraConfig, get_peft_model

    fields = {"init_r": math.ceil(1.5 * config.rank), "target_r": config.rank, "lora_alpha": config.alpha,
              "lora_dropout": config.dropout, "target_modules": peft_targets(classifier, config),
              "modules_to_save": [HEAD_MODULE], "orth_reg_weight": ORTH_REG_WEIGHT,
              **adalora_schedule(budget_horizon(config, total_steps))}
    peft_model = get_peft_model(classifier, _peft_config(AdaLoraConfig, config.method_options, **fields))
    prepared = _prepared(peft_model, classifier)
    prepared.make_hooks = lambda optimizer, steps: [AdaLoraHook(peft_model)]
    return prepared


def load_peft(classifier: SequenceClassifier, folder: Path, metadata: dict[str, Any]) -> nn.Module:
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        # AdaLoRA's saved rank_pattern names lora_E tensors, which PEFT's newer key check
        # reports as unmatched; the masked (zero) singular values load from the weights anyway.
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        return PeftModel.from_pretrained(classifier, str(folder))


register_method(Method("peft-lora", 1e-3, prepare_peft_lora, load_peft,
                       "Hugging Face PEFT's LoRA (reference implementation)"))
register_method(Method("peft-adalora", 1e-3, prepare_peft_adalora, load_peft,
                       "Hugging Face PEFT's AdaLoRA: SVD-form adapters pruned to the LoRA budget"))
