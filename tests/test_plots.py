"""Figures a person reads at a glance: named metrics and titles on curves.png, a quality plot
zoomed to the results with the majority-class score marked, subspace panels that do not overlap."""

from __future__ import annotations

import numpy as np

from dynalora.bench.plots import quality_figure
from dynalora.training.report import curves_figure, moving_average


def records() -> list[dict]:
    train = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 61)]
    evals = [{"kind": "eval", "step": s, "metrics": {"f1": f, "main": f}} for s, f in ((20, 0.80), (40, 0.84), (60, 0.83))]
    return train + evals


def test_curves_name_the_metric_mark_the_best_step_and_carry_a_title() -> None:
    fig = curves_figure(records(), "f1", title="mrpc: dynamic LoRA")
    left, right = fig.axes
    assert fig._suptitle.get_text() == "mrpc: dynamic LoRA"
    assert right.get_ylabel() == "F1 (evaluation split)" and "main" not in right.get_ylabel()
    assert right.get_legend().get_texts()[0].get_text() == "best: 0.84 at step 40"
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["per step", "moving average of 3 steps"]
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_lower_is_better_metrics_mark_the_lowest_point() -> None:
    evals = [{"kind": "eval", "step": s, "metrics": {"loss": v}} for s, v in ((0, 1.4), (16, 1.1), (32, 1.2))]
    right = curves_figure(evals, "loss").axes[1]
    assert right.get_legend().get_texts()[0].get_text() == "best: 1.1 at step 16"


def result(task: str, method: str, seed: int, main: float) -> dict:
    metric = {"mrpc": "f1", "sst2": "accuracy"}[task]
    return {"task": task, "method": method, "seed": seed, "metrics": {metric: main, "main": main}}


def test_quality_plot_zooms_to_the_results_and_draws_the_majority_class() -> None:
    results = [result(t, m, s, v + 0.002 * s) for t, base in (("mrpc", 0.81), ("sst2", 0.78))
               for m, v in (("lora", base), ("dynamic", base + 0.01)) for s in (0, 1)]
    fig = quality_figure(results, ["lora", "dynamic"], {"mrpc": 0.812})
    mrpc, sst2 = fig.axes
    low, high = mrpc.get_xlim()
    assert high - low < 6  # points, not the 0-100 range where one-point differences vanish
    assert low < 81.2 < high and any("majority class 81.2" in t.get_text() for t in mrpc.texts)
    assert not any("majority" in t.get_text() for t in sst2.texts)  # no score known for sst2: no line
    assert mrpc.get_xlabel() == "F1 (%)" and "2 seeds" in mrpc.get_title()
    ticks = np.diff(mrpc.get_xticks())
    assert ticks.max() <= 1.0  # gridlines at every point


def test_subspace_panel_titles_do_not_overlap(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    from dynalora.analysis import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    grids = {f"encoder.layer.{i}.attention.self.{m}": np.random.default_rng(i).random((8, 8))
             for i in range(3) for m in ("query", "value")}
    plots.phi_heatmaps(grids, tmp_path / "s.png", "phi")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6
    for i, panel in enumerate(panels):
        title = panel.title.get_window_extent(renderer)
        # no other panel (its image, tick labels or title) under this panel's title
        assert not any(title.overlaps(other.get_tightbbox(renderer)) for j, other in enumerate(panels) if j != i)
    plt.close(fig)


def test_a_rank1_run_draws_its_gates(tiny_model_dir, tiny_glue_dir, tmp_path) -> None:
    from PIL import Image
    from training_helpers import tiny_config

    from dynalora.training import train

    train(tiny_config(tiny_model_dir, tiny_glue_dir, tmp_path, method="rank1", epochs=1.0))
    assert (tmp_path / "gates.png").is_file()
    width, height = Image.open(tmp_path / "gates.png").size
    assert width < 2000 and height < 1000  # 4 layers of at most 8 components: a small figure
