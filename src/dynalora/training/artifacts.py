"""What can be done with a trained run folder: merge it, export it, look inside it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters import DynaLoraModel
from dynalora.adapters.model import CONFIG_FILE, read_adapter
from dynalora.adapters.peft_format import PEFT_CONFIG, PEFT_WEIGHTS, PREFIX
from dynalora.files import (
    AdapterFileError,
    atomic_dir,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from dynalora.training.api import load_trained, read_run
from dynalora.training.methods import HEAD_MODULE, STATE_FILE, get_method

HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head.json"
BACKBONE = "backbone."  # where the encoder sits inside our SequenceClassifier


class MergeError(ValueError):
    """A trained model whose update cannot be folded into the base weights."""


def merge_trained(adapter_dir: str | Path, output: str | Path, base_model: str | Path | None = None) -> Path:
    """Write the trained backbone as a plain transformers checkpoint, the head beside it.

    `AutoModel.from_pretrained(output)` loads the backbone with no dynalora installed; the
    head is `head.safetensors` (a Linear: weight, bias) with `head.json` saying how to pool.
    """
    metadata = read_run(adapter_dir)["metadata"]
    if not get_method(metadata["method"]).mergeable:
        raise MergeError(f"method {metadata['method']!r} adds layers to the model; its update cannot be "
                         "merged into the base weights")
    model, tokenizer, metadata = load_trained(adapter_dir, base_model)
    if isinstance(model, DynaLoraModel):
        try:
            classifier = model.merge_and_unload()
        except RuntimeError as err:  # input-conditional gates
            raise MergeError(str(err)) from None
    else:
        classifier = model
    with atomic_dir(output) as tmp:
        classifier.backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_head(tmp, classifier.classifier, metadata)
    return Path(output)


def write_head(folder: Path, head: nn.Module, metadata: dict[str, Any]) -> None:
    """The classification head (a Linear: weight, bias) and how to apply it, for use without dynalora."""
    save_tensors(folder / HEAD_FILE, head.state_dict())
    write_json(folder / HEAD_CONFIG, {
        "pooling": metadata["pooling"], "num_labels": metadata["num_labels"], "labels": metadata["labels"],
        "regression": metadata["regression"], "task": metadata["task"], "max_length": metadata["max_length"],
        "how": "logits = head(pool(encoder(**tokens))) with pool = masked mean of last_hidden_state "
               "('mean'), its first token ('cls') or pooler_output ('pooler')",
    })


def export_trained(adapter_dir: str | Path, output: str | Path, fmt: str = "peft",
                   fold_scaling: bool = False) -> Path:
    """Export a LoRA-family run's adapter in Hugging Face PEFT's format, for the base encoder.

    `PeftModel.from_pretrained(AutoModel.from_pretrained(base_model), output)` gives the
    trained encoder without dynalora: module names are the encoder's own. The classification
    head is ours, not a transformers class, so it is written beside the adapter as
    `merge_trained` writes it (head.safetensors + head.json).
    """
    if fmt != "peft":
        raise AdapterFileError(f"export format {fmt!r} is not supported; use 'peft'")
    metadata = read_run(adapter_dir)["metadata"]
    if not (Path(adapter_dir) / CONFIG_FILE).is_file():
        raise AdapterFileError(f"method {metadata['method']!r} trains no LoRA adapter; there is nothing to "
                               "export in PEFT's format (use `dynalora merge` for a plain checkpoint)")
    model, _, _ = load_trained(adapter_dir)
    with tempfile.TemporaryDirectory() as scratch:
        model.export_peft(Path(scratch), fold_scaling=fold_scaling)  # names inside our classifier
        document = read_json(Path(scratch) / PEFT_CONFIG, "exported adapter config")
        tensors = load_tensors(Path(scratch) / f"{PEFT_WEIGHTS}.safetensors")
    document, tensors = encoder_relative(document, tensors)
    with atomic_dir(output) as tmp:
        save_tensors(tmp / f"{PEFT_WEIGHTS}.safetensors", tensors, metadata={"format": "pt", "exported_by": "dynalora"})
        write_json(tmp / PEFT_CONFIG, document)
        write_head(tmp, model.base_model.classifier, metadata)
    return Path(output)


def encoder_relative(document: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT adapter of our classifier renamed to fit the bare encoder, the head left out."""

    def inside(name: str) -> str:
        if not name.startswith(BACKBONE):
            raise AdapterFileError(f"{name}: not inside the encoder, so PEFT cannot load it onto the base model")
        return name.removeprefix(BACKBONE)

    saved = [m for m in document.get("modules_to_save") or [] if m != HEAD_MODULE]
    renamed = {
        **document,
        "task_type": None,  # a bare encoder (AutoModel), no task head
        "target_modules": [inside(n) for n in document["target_modules"]],
        "rank_pattern": {inside(k): v for k, v in document["rank_pattern"].items()},
        "alpha_pattern": {inside(k): v for k, v in document["alpha_pattern"].items()},
        "modules_to_save": [inside(m) for m in saved] or None,
    }
    head = f"{PREFIX}{HEAD_MODULE}."
    kept = {PREFIX + inside(k.removeprefix(PREFIX)): v for k, v in tensors.items() if not k.startswith(head)}
    return renamed, kept


def describe_run(adapter_dir: str | Path) -> dict[str, Any]:
    """Per-layer ranks, allocation weights and parameter counts of a run, from its files alone."""
    folder = Path(adapter_dir)
    metadata = read_run(folder)["metadata"]
    rows = []
    if (folder / CONFIG_FILE).is_file():
        document, state = read_adapter(folder)
        for name, layer in document["layers"].items():
            params = sum(v.numel() for k, v in state.items() if k.startswith(name + ".") and k != f"{name}.weight")
            rows.append({"module": name, "rank": layer["r"], "weight": round(layer["weight"], 4),
                         "scaling": round(layer["scaling"], 4), "params": params})
        saved = [k for k in state if k.startswith("modules_to_save.")]
        groups = {k.rsplit(".", 1)[0].removeprefix("modules_to_save.") for k in saved}
        for group in sorted(groups):
            params = sum(state[k].numel() for k in saved if k.rsplit(".", 1)[0].removeprefix("modules_to_save.") == group)
            rows.append({"module": group, "rank": None, "weight": None, "scaling": None, "params": params})
    else:
        state = load_tensors(folder / STATE_FILE)
        modules: dict[str, int] = {}
        for key, value in state.items():
            module = key.rsplit(".", 1)[0]
            modules[module] = modules.get(module, 0) + value.numel()
        rows = [{"module": m, "rank": None, "weight": None, "scaling": None, "params": n} for m, n in modules.items()]
    return {"method": metadata["method"], "task": metadata["task"], "base_model": metadata["base_model"],
            "layers": rows, "trained_params": sum(r["params"] for r in rows)}
