"""What can be done with a trained run folder: merge it, export it, look inside it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.adapters import DynaLoraModel
from dynalora.adapters.adapter_file import CONFIG_FILE, read_adapter
from dynalora.adapters.peft_format import PEFT_CONFIG, PEFT_WEIGHTS, PREFIX
from dynalora.errors import MergeError
from dynalora.files import (
    AdapterFileError,
    atomic_dir,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from dynalora.packaged import portable_name
from dynalora.runs import check_output_folder, results_folder
from dynalora.training.api import SFT_RUN_FILE, load_trained, read_run
from dynalora.training.hf_export import save_standard, standard_classifier
from dynalora.training.methods import HEAD_MODULE, STATE_FILE, get_method

HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head.json"
BACKBONE = "backbone."  # where the encoder sits inside our SequenceClassifier


def merge_trained(adapter_dir: str | Path, output: str | Path, base_model: str | Path | None = None,
                  overwrite: bool = False) -> Path:
    """Write the trained classifier as a folder `AutoModelForSequenceClassification` loads.

    The update is folded into the encoder's weights; the folder holds the whole classifier
    (encoder + head) with `id2label`/`label2id`, and the tokenizer. How it loads without
    dynalora depends on the pooling (see `dynalora.training.hf_export`).
    """
    check_output_folder(output, overwrite)
    if (results_folder(adapter_dir) / SFT_RUN_FILE).is_file():
        return merge_sft(results_folder(adapter_dir), output, base_model)
    metadata = read_run(adapter_dir)["metadata"]
    if not get_method(metadata["method"]).mergeable:
        raise MergeError(f"method {metadata['method']!r} adds layers to the model; its update cannot be "
                         "merged into the base weights")
    model, tokenizer, metadata = load_trained(adapter_dir, base_model)
    classifier = model.merge_and_unload() if isinstance(model, DynaLoraModel) else model  # MergeError: input gates
    standalone = standard_classifier(classifier, metadata)
    with atomic_dir(output) as tmp, quiet_transformers():
        save_standard(standalone, tmp)
        tokenizer.save_pretrained(tmp)
    return Path(output)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" bar from save_pretrained: stderr is for our one-line messages."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def write_head(folder: Path, head: nn.Module, metadata: dict[str, Any]) -> None:
    """The classification head (a Linear: weight, bias) and how to apply it, beside an adapter
    for the bare encoder."""
    save_tensors(folder / HEAD_FILE, head.state_dict())
    write_json(folder / HEAD_CONFIG, {
        "pooling": metadata["pooling"], "num_labels": metadata["num_labels"], "labels": metadata["labels"],
        "regression": metadata["regression"], "task": metadata["task"], "max_length": metadata["max_length"],
        "how": "logits = head(pool(encoder(**tokens))) with pool = masked mean of last_hidden_state "
               "('mean') or its first token ('cls')",
    })


def export_trained(adapter_dir: str | Path, output: str | Path, fmt: str = "peft",
                   fold_scaling: bool = False, overwrite: bool = False) -> Path:
    """Export a LoRA-family run's adapter in Hugging Face PEFT's format.

    A classification run with BERT's own head (pooling "pooler") exports as `SEQ_CLS` for
    `AutoModelForSequenceClassification` of the base model, the head in the file. Other
    poolings have no transformers head, so the adapter is for the bare encoder (`AutoModel`,
    `FEATURE_EXTRACTION`) and the head is written beside it (head.safetensors + head.json).
    An instruction-tuning run exports as `CAUSAL_LM`. `base_model_name_or_path` is the Hub id
    when the base is a packaged model.
    """
    if fmt != "peft":
        raise AdapterFileError(f"export format {fmt!r} is not supported; use 'peft'")
    check_output_folder(output, overwrite)
    folder = results_folder(adapter_dir)
    if (folder / SFT_RUN_FILE).is_file():
        return export_sft(folder, output, fold_scaling)
    metadata = read_run(folder)["metadata"]
    if not (folder / CONFIG_FILE).is_file():
        raise AdapterFileError(f"method {metadata['method']!r} trains no LoRA adapter; there is nothing to "
                               "export in PEFT's format (use `dynalora merge` for a plain checkpoint)")
    model, _, _ = load_trained(folder)
    with tempfile.TemporaryDirectory() as scratch:
        model.export_peft(Path(scratch), fold_scaling=fold_scaling)  # names inside our classifier
        document = read_json(Path(scratch) / PEFT_CONFIG, "exported adapter config")
        tensors = load_tensors(Path(scratch) / f"{PEFT_WEIGHTS}.safetensors")
    bert_head = metadata["pooling"] == "pooler" and model.base_model.config.model_type == "bert"
    document, tensors = encoder_relative(document, tensors, "bert." if bert_head else "")
    document["base_model_name_or_path"] = portable_name(metadata["base_model"])
    with atomic_dir(output) as tmp:
        save_tensors(tmp / f"{PEFT_WEIGHTS}.safetensors", tensors, metadata={"format": "pt", "exported_by": "dynalora"})
        write_json(tmp / PEFT_CONFIG, document)
        if not bert_head:
            write_head(tmp, model.base_model.classifier, metadata)
    return Path(output)


def merge_sft(folder: Path, output: str | Path, base_model: str | Path | None) -> Path:
    """An instruction-tuning run merged into its base causal LM: a folder
    `AutoModelForCausalLM.from_pretrained` loads (weights, config, tokenizer), no dynalora."""
    from dynalora.llm.models import load_with_adapters

    wrapper, tokenizer = load_with_adapters([folder], model=base_model)
    model = wrapper.merge_and_unload()
    with atomic_dir(output) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(output)


def export_sft(folder: Path, output: str | Path, fold_scaling: bool) -> Path:
    """An instruction-tuning run's adapter for PEFT (`CAUSAL_LM` on the recorded base model)."""
    from dynalora.llm.models import load_with_adapters

    wrapper, _ = load_with_adapters([folder])
    wrapper.export_peft(output, fold_scaling=fold_scaling)
    return Path(output)


def encoder_relative(document: dict[str, Any], tensors: dict[str, torch.Tensor], encoder_prefix: str = ""
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT adapter of our classifier renamed to fit transformers' own model of the base.

    `encoder_prefix` "": the bare encoder (AutoModel), the head left out. "bert.": BERT's
    sequence classifier, whose encoder sits under `bert.` and whose head is `classifier` as ours.
    """

    def inside(name: str) -> str:
        if not name.startswith(BACKBONE):
            raise AdapterFileError(f"{name}: not inside the encoder, so PEFT cannot load it onto the base model")
        return encoder_prefix + name.removeprefix(BACKBONE)

    keep_head = bool(encoder_prefix)
    saved = [m for m in document.get("modules_to_save") or [] if m != HEAD_MODULE]
    renamed = {
        **document,
        "task_type": "SEQ_CLS" if keep_head else "FEATURE_EXTRACTION",
        "target_modules": [inside(n) for n in document["target_modules"]],
        "rank_pattern": {inside(k): v for k, v in document["rank_pattern"].items()},
        "alpha_pattern": {inside(k): v for k, v in document["alpha_pattern"].items()},
        "modules_to_save": [inside(m) for m in saved] + ([HEAD_MODULE] if keep_head else []) or None,
    }
    head = f"{PREFIX}{HEAD_MODULE}."
    kept = {}
    for key, value in tensors.items():
        if key.startswith(head):
            if keep_head:
                kept[key] = value
            continue
        kept[PREFIX + inside(key.removeprefix(PREFIX))] = value
    return renamed, kept


def describe_run(adapter_dir: str | Path) -> dict[str, Any]:
    """Per-layer ranks, allocation weights and parameter counts of a run, from its files alone."""
    folder = results_folder(adapter_dir)
    if (folder / SFT_RUN_FILE).is_file():  # instruction tuning: an adapter of a causal LM
        metadata = {**read_json(folder / SFT_RUN_FILE, "instruction-tuning run description")["metadata"],
                    "task": "instruction tuning"}
    else:
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
