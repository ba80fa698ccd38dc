"""How much of the best possible allocation gain dynamic LoRA captures, on a toy with a known answer.

    .venv/bin/python benchmarks/allocation_toy.py [--ranks 2 4 8] [--seeds 0 1 2] [--steps 300]
        [--batch 64] [--arms uniform v2 ...] [--widths square|mixed] [--output STEM]

Twelve layers (16 x 16) must each learn a target update of known rank (their "needs",
1 to 16 directions, each target of Frobenius norm 2 spread evenly over its directions;
`RankNeedToy` of tests/allocation_helpers.py). At rank r a layer that needs k > r directions
keeps the energy of k - r of them: (4 / k) / 16 per missing direction. So for any final
ranks the best reachable loss is known, and so is the best allocation of a budget: a direction
of a layer that needs k is worth 4 / k, and the oracle takes the most valuable directions the
budget (12 r directions, every layer at least 1, at most 4 r and 16) buys. Low-need layers are worth
filling first: their few directions carry more energy each.

Arms, all at the budget of uniform LoRA at rank r:
  uniform     LoRA: every layer at r (dynamic LoRA with no reallocation and no weights);
  v2          dynamic LoRA's defaults;
  v2-ranks    the defaults with weight_mode="ranks" (weights steer ranks, learning rates alone);
  target      the defaults with rank_rule="target": ranks from the value of each direction of
              the layer's Newton target (secant curvature between gradient probes);
  target-1step  the same with each probe from one step's gradient (probe_steps=1);
  target-pooled  the same with one curvature for all layers (curvature="pooled");
  paper       the paper-literal rule: element-mean importance, weights in the forward,
              clamps [0.25, 4], tau 1, beta 1, gamma 0, 12 reallocations, no hysteresis, fresh
              components with zeroed Adam state. Every layer reads the same input here, so the
              input statistic cannot tell them apart and ranks stay near uniform;
  rank1       Rank-1 Sum LoRA, the AdaLoRA / SoRA-style alternative: 2 r gated components per
              layer at the start, pruned by smoothed sensitivity on a cubic schedule to the
              budget of 12 r components (keep_fraction 0.5, its default);
  oracle      LoRA at the oracle's ranks, fixed from the start.

Per arm: the trained loss on fresh inputs, the best loss reachable at its final ranks
("theory"), and the share of the oracle's gain over uniform it captures, (uniform - arm) /
(uniform - oracle), from the theory losses (training noise apart) and from the trained ones.
r = 2 is a tight budget (24 directions for needs that sum to 61), r = 4 a binding one, r = 8
a loose one (96 directions; only the layers that need 12 and 16 lack any).

--widths mixed gives every second layer 128 outputs instead of 16 (128 x 16, outputs x inputs: a rank costs 144
parameters there against 32, and the gradient probe keeps a 96-row sketch of it, as it does for
MiniLM's layers). A direction is worth the same in either width, so the best allocation now
weighs value against cost (found exactly by dynamic programming), and the budget is uniform
LoRA's in parameters. The question it asks: do the rank rules treat wide and narrow layers,
sketched and not, on the same footing?

Writes benchmarks/results/allocation_toy.{json,md,csv,png} (the figure: each arm's share of the
best gain by budget; `--replot STEM` redraws it from an earlier run's JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from allocation_helpers import RankNeedToy, oracle_ranks, theory_loss, toy_training  # noqa: E402
from bench_common import load_average, result_header  # noqa: E402

from dynalora.allocation import DynamicLoraConfig, Rank1LoraConfig  # noqa: E402
from dynalora.analysis.tables import write_table  # noqa: E402
from dynalora.files import write_json  # noqa: E402

NEEDS = [1, 1, 1, 2, 2, 2, 4, 4, 8, 8, 12, 16]
D = 16
WIDTHS = {"square": [D] * len(NEEDS), "mixed": [D, 128] * (len(NEEDS) // 2)}
SHAPES = {"square": "16 x 16", "mixed": "16 x 16 and 128 x 16 alternating"}
ARMS = ["uniform", "v2", "v2-ranks", "target", "paper", "rank1", "oracle"]
EXTRA_ARMS = ["target-1step", "target-pooled"]
PAPER = {"importance": "magnitude", "weight_mode": "forward", "w_min": 0.25, "w_max": 4.0, "tau": 1.0,
         "beta": 1.0, "gamma": 0.0, "reallocations": 12, "hysteresis": 0, "grow_state": "zero"}


def arm_config(arm: str, r: int, names: list[str], outs: list[int]) -> DynamicLoraConfig | Rank1LoraConfig:
    if arm == "uniform":
        return DynamicLoraConfig(r=r, target_modules=names, reallocations=0, weighting="off")
    if arm == "oracle":
        pattern = {f"^{name}$": k for name, k in zip(names, oracle_ranks(r, NEEDS, outs=outs))}
        return DynamicLoraConfig(r=r, target_modules=names, reallocations=0, weighting="off", rank_pattern=pattern)
    if arm == "rank1":
        return Rank1LoraConfig(r=2 * r, target_modules=names)
    options = {"v2": {}, "v2-ranks": {"weight_mode": "ranks"}, "target": {"rank_rule": "target"},
               "target-1step": {"rank_rule": "target", "probe_steps": 1},
               "target-pooled": {"rank_rule": "target", "curvature": "pooled"}, "paper": PAPER}[arm]
    return DynamicLoraConfig(r=r, target_modules=names, **options)


def run(arm: str, r: int, seed: int, steps: int, batch: int, outs: list[int]) -> dict:
    names = [f"layers.{i}" for i in range(len(NEEDS))]
    model, controller, _ = toy_training(RankNeedToy(NEEDS, d=D, seed=seed, outs=outs), arm_config(arm, r, names, outs),
                                        steps, seed=seed,
                                        batch=batch)
    x = torch.randn(4096, D, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        loss = float(model(x))
    ranks = [model.ranks()[name] for name in names]
    summary = controller.summary() if hasattr(controller, "summary") else {}
    return {"arm": arm, "r": r, "seed": seed, "loss": loss, "theory": theory_loss(ranks, NEEDS), "ranks": ranks,
            "parameters": sum(k * (D + out) for k, out in zip(ranks, outs)), "budget": r * sum(D + out for out in outs),
            "reversals_per_layer": summary.get("reversals", {}).get("mean_per_layer")}


def _median_or_dash(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.2f}" if known else "–"


def summarise(runs: list[dict], arms: list[str], outs: list[int]) -> list[dict]:
    rows = []
    def median(r: int, arm: str, key: str) -> float:
        return statistics.median(x[key] for x in runs if x["r"] == r and x["arm"] == arm)

    for r in sorted({x["r"] for x in runs}):
        base, best = median(r, "uniform", "loss"), median(r, "oracle", "loss")
        base_t, best_t = theory_loss([r] * len(NEEDS), NEEDS), theory_loss(oracle_ranks(r, NEEDS, outs=outs), NEEDS)
        for arm in arms:
            loss, theory = median(r, arm, "loss"), median(r, arm, "theory")
            mine = [x for x in runs if x["r"] == r and x["arm"] == arm]
            rows.append({
                "r": r, "arm": arm, "seeds": len(mine), "loss (median)": f"{loss:.4f}", "theory at its ranks": f"{theory:.4f}",
                "share of oracle gain (theory)": f"{(base_t - theory) / (base_t - best_t):.2f}" if base_t > best_t else "–",
                "share of oracle gain (trained)": f"{(base - loss) / (base - best):.2f}" if base - best > 1e-3 else "–",
                "rank reversals per layer": _median_or_dash([x["reversals_per_layer"] for x in mine]),
                "final ranks (seed " + str(mine[0]["seed"]) + ")": " ".join(map(str, mine[0]["ranks"])),
            })
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Share of the best allocation's gain (from the theory losses) by budget, one line per arm."""
    import matplotlib.pyplot as plt

    from dynalora.analysis.plots import save_figure

    arms = [a for a in dict.fromkeys(row["arm"] for row in rows) if a not in ("uniform", "oracle")]
    ranks = sorted({row["r"] for row in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm in arms:
        shares = {row["r"]: float(row["share of oracle gain (theory)"]) for row in rows if row["arm"] == arm}
        ax.plot(ranks, [shares[r] for r in ranks], marker="o", label=arm)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.text(ranks[0], 1.02, "best allocation", fontsize=8, va="bottom")
    ax.text(ranks[0], 0.02, "uniform LoRA", fontsize=8, va="bottom", color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [f"r = {r}" for r in ranks])
    ax.set_xlabel("budget (uniform LoRA's parameters at rank r)")
    ax.set_ylabel("share of the best allocation's gain")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[2, 4, 8], help="at most 8 (rank1 starts at 2 r)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64, help="rows per step (fewer: noisier gradients)")
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=[*ARMS, *EXTRA_ARMS],
                        help="uniform and oracle are always run (the shares need them)")
    parser.add_argument("--widths", choices=sorted(WIDTHS), default="square",
                        help="square: 12 layers of 16 x 16; mixed: every second layer 16 x 128 (outputs x inputs: 128 x 16)")
    parser.add_argument("--output", default=str(HERE / "results" / "allocation_toy"))
    parser.add_argument("--replot", metavar="STEM", help="redraw STEM.png from STEM.json and exit")
    args = parser.parse_args(argv)
    if args.replot:
        if not Path(args.replot + ".json").is_file():
            parser.error(f"--replot: no result file {args.replot}.json (give the path without .json)")
        saved = json.loads(Path(args.replot + ".json").read_text())
        print(plot(saved["rows"], Path(args.replot + ".png"), _figure_title(saved)))
        return
    outs = WIDTHS[args.widths]
    if not all(1 <= r <= D // 2 for r in args.ranks):  # rank1 starts at 2 r, at most the layers' size
        parser.error(f"--ranks must lie in 1..{D // 2} (rank1 starts at 2 r in {D} x {D} layers), got {args.ranks}")
    torch.set_num_threads(1)
    arms = ["uniform", *[a for a in args.arms if a not in ("uniform", "oracle")], "oracle"]
    load = load_average()
    runs = []
    for r in args.ranks:
        for seed in args.seeds:
            for arm in arms:
                runs.append(run(arm, r, seed, args.steps, args.batch, outs))
                print(f"r={r} seed {seed} {arm}: loss {runs[-1]['loss']:.4f}, theory {runs[-1]['theory']:.4f}",
                      flush=True)
    rows = summarise(runs, arms, outs)
    text = write_table(rows, list(rows[0]), Path(args.output),
                       title=f"Allocation on a toy with known needs {NEEDS} (12 layers, {SHAPES[args.widths]}), "
                             f"{args.steps} steps of {args.batch} rows, medians over seeds {args.seeds}")
    saved = {**result_header("allocation_toy.py", argv, args, load), "needs": NEEDS, "outs": outs, "rows": rows,
             "runs": runs}
    write_json(Path(args.output + ".json"), saved)
    plot(rows, Path(args.output + ".png"), _figure_title(saved))
    print(text)


def _figure_title(saved: dict) -> str:
    widths = "layers of two widths" if len(set(saved.get("outs") or [D])) > 1 else "12 square layers"
    return f"Toy with known needs ({widths}), {saved.get('settings', {}).get('batch', 64)} rows per step"


if __name__ == "__main__":
    main()
