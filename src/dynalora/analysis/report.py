"""`dynalora analyze`: the LoRA paper's analyses of one or two saved adapters, as files.

    analyze(["runs/r8/adapter", "runs/r64/adapter"], "analysis/")

writes `spectrum_<k>.{csv,md}` for each adapter (how much of each layer's rank its update
uses: effective rank, top-k energy), `amplification_<k>.{csv,md,png}` (needs the base weights:
taken from the adapter's recorded base model folder, or `base=`), and for two adapters
`subspace.{csv,md}` and `subspace.png` (phi heatmaps per layer), plus `analysis.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dynalora.adapters.config import ConfigError
from dynalora.adapters.model import CONFIG_FILE
from dynalora.analysis.amplification import amplification
from dynalora.analysis.factors import load_base_weights, load_factors
from dynalora.analysis.plots import amplification_bars, phi_heatmaps
from dynalora.analysis.spectrum import SPECTRUM_COLUMNS, spectrum_rows
from dynalora.analysis.subspace import adapter_similarity
from dynalora.analysis.tables import write_table
from dynalora.files import AdapterFileError, read_json, write_json

AMPLIFICATION_COLUMNS = ["layer", "r", "delta_norm", "w0_norm", "w0_along_delta", "w0_along_w0_top",
                         "w0_along_random", "amplification", "amplification_random"]
SUBSPACE_COLUMNS = ["layer", "r1", "r2", "phi_1_1", "phi_top_top", "phi_mean", "random_expected"]


def resolve_base(document: dict[str, Any], base: str | Path | None, adapter: str | Path) -> Path:
    if base is not None:
        return Path(base)
    recorded = document.get("base_model")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    raise AdapterFileError(
        f"{adapter}: amplification needs the base model's weights; the adapter records base "
        f"{recorded!r}, which is not a local folder. Pass --base PATH"
    )


def read_factors(adapter: str | Path) -> tuple[dict, dict[str, Any]]:
    """load_factors, with a clear error for a run folder of a method that trains no LoRA adapter."""
    from dynalora.runs import results_folder
    from dynalora.training.api import RUN_FILE

    folder = results_folder(adapter)
    if folder.is_dir() and not (folder / CONFIG_FILE).is_file() and (folder / RUN_FILE).is_file():
        method = read_json(folder / RUN_FILE, "trained run description").get("metadata", {}).get("method")
        raise AdapterFileError(f"{folder}: a {method!r} run has no LoRA adapter to analyse; "
                               "analyze reads lora, dynamic and rank1 runs")
    return load_factors(folder)


def amplification_rows(adapter: str | Path, base: str | Path | None, seed: int = 0) -> list[dict]:
    layers, document = read_factors(adapter)
    base_path = resolve_base(document, base, adapter)
    trained = [n for n, f in layers.items() if f.r > 0 and float(f.delta.abs().max()) > 0]
    if not trained:
        raise AdapterFileError(f"{adapter}: every layer's Delta W is zero (B = 0 or rank 0); nothing to analyse")
    w0 = load_base_weights(base_path, trained)
    try:
        return [{"layer": n, **amplification(layers[n].delta, w0[n], r=layers[n].r, seed=seed)} for n in trained]
    except ValueError as err:  # shapes differ: another base model than the adapter's
        raise AdapterFileError(f"{adapter} with base {base_path}: {err}; is this the adapter's base model?") from None


def subspace_rows(grids: dict[str, np.ndarray], dims: dict[str, int]) -> list[dict]:
    rows = []
    for name, grid in grids.items():
        r1, r2 = grid.shape
        top = min(r1, r2)
        rows.append({
            "layer": name, "r1": r1, "r2": r2, "phi_1_1": float(grid[0, 0]),
            "phi_top_top": float(grid[top - 1, top - 1]), "phi_mean": float(grid.mean()),
            # Two random subspaces of sizes i, j in k dims: E[phi] = max(i, j) / k, at i = j = top.
            "random_expected": top / dims[name],
        })
    return rows


def analyze(adapters: list[str | Path], output: str | Path, base: str | Path | None = None,
            source: str = "A", seed: int = 0, echo: bool = True) -> dict[str, Any]:
    """Run the analyses, write tables, PNGs and `analysis.json` into `output`; return the numbers."""
    if not 1 <= len(adapters) <= 2:
        raise ConfigError(f"adapters: give one or two adapter folders, got {len(adapters)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"adapters": [str(a) for a in adapters], "source": source}
    for k, adapter in enumerate(adapters, start=1):
        rows = spectrum_rows(read_factors(adapter)[0])
        text = write_table(rows, SPECTRUM_COLUMNS, output / f"spectrum_{k}",
                           title=f"Rank use, adapter {k}: {adapter}", digits=3)
        result[f"spectrum_{k}"] = rows
        if echo:
            print(text)
        rows = amplification_rows(adapter, base, seed)
        text = write_table(rows, AMPLIFICATION_COLUMNS, output / f"amplification_{k}",
                           title=f"Amplification, adapter {k}: {adapter}", digits=3)
        amplification_bars(rows, output / f"amplification_{k}.png", f"amplification: {Path(adapter).name}")
        result[f"amplification_{k}"] = rows
        if echo:
            print(text)
    if len(adapters) == 2:
        first, _ = read_factors(adapters[0])
        second, _ = read_factors(adapters[1])
        try:
            grids = adapter_similarity(first, second, source)
        except ValueError as err:  # no common layer, or layers of different widths
            raise AdapterFileError(f"{adapters[0]} vs {adapters[1]}: {err}") from None
        dims = {n: (first[n].A.shape[1] if source != "delta-out" else first[n].B.shape[0]) for n in grids}
        rows = subspace_rows(grids, dims)
        text = write_table(rows, SUBSPACE_COLUMNS, output / "subspace",
                           title=f"Subspace similarity phi ({source} directions)", digits=3)
        phi_heatmaps(grids, output / "subspace.png", f"phi(i, j), {source} directions")
        result["subspace"] = rows
        result["phi_grids"] = {n: g.tolist() for n, g in grids.items()}
        if echo:
            print(text)
    write_json(output / "analysis.json", result)
    return result
