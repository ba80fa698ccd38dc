"""The protocol report's views: a majority line far from every seed does not flatten the
panel, the paired figure lays out any number of arms, each against its own reference, and the
at-a-glance table shows each arm once, against the reference the protocol pairs it with."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from dynalora.bench.report import paired_wide_rows
from dynalora.bench.report_plots import axis_range, paired_plot, panel_grid
from dynalora.bench.stats import paired


def test_a_distant_majority_line_is_left_off_the_axis_and_a_near_one_is_drawn():
    low, high, on_axis = axis_range([85.2, 86.3, 86.8], 0.0)  # STS-B: "majority" scores 0
    assert not on_axis and 84.0 <= low < 85.2 and 86.8 < high <= 88.0  # a point stays > 1/5 of the axis
    low, high, on_axis = axis_range([80.6, 83.0, 85.5], 74.8)  # MRPC: the line belongs in the panel
    assert on_axis and low < 74.8 and high > 85.5
    assert axis_range([49.8, 55.6, 59.2], 52.7)[2]  # RTE: the line runs through the seeds
    assert axis_range([22.0, 35.0], 0.0)[2]  # CoLA: chance (MCC 0) within twice the seeds' spread
    assert not axis_range([80.0, 81.0], None)[2]


@pytest.mark.parametrize("n_arms", [1, 4, 5])
def test_the_paired_figure_lays_out_any_number_of_arms_against_their_own_references(tmp_path, n_arms):
    diffs = paired([0.01, -0.02, 0.015, 0.0])
    items = [(f"arm{k}", task, diffs, "lora-r2" if k % 2 else "lora") for k in range(n_arms)
             for task in ("mrpc", "average (1 task)")]
    path = paired_plot(items, "lora", tmp_path / "paired.png")
    width = mpimg.imread(path).shape[1]
    assert (width > 1.5 * 640) == (n_arms > 3)  # two columns past three panels


def test_the_glance_table_shows_an_arm_once_against_its_own_reference():
    tasks = ["mrpc", "cola"]
    five, one = paired([0.02, -0.01, 0.03, 0.01, 0.02]), paired([0.4])
    results = [("dynamic", "mrpc", five), ("dynamic", "cola", one), ("dynamic", "average (2 tasks)", one),
               ("dynamic-r2", "cola", one)]  # against lora, as the main paired table has it
    own = [("dynamic-r2", "cola", five, "lora-r2")]
    table = paired_wide_rows(results + own, tasks, ["lora", "dynamic-r2", "dynamic"], "lora")
    assert [row["arm"] for row in table] == ["dynamic-r2", "dynamic"]  # in the order of the arms
    rows = {row["arm"]: row for row in table}
    assert rows["dynamic"] == {"arm": "dynamic", "minus": "lora",
                               "mrpc": f"{five.mean:+.1f} [{five.low:+.1f}, {five.high:+.1f}] (n=5)",
                               "cola": f"{one.mean:+.1f} (n=1)", "average": f"{one.mean:+.1f} (n=1)"}
    assert rows["dynamic-r2"]["minus"] == "lora-r2" and rows["dynamic-r2"]["cola"].endswith("(n=5)")
    assert rows["dynamic-r2"]["mrpc"] == "–"


def test_lr_sensitivity_compares_one_configuration_at_its_lrs_over_shared_seeds():
    from dynalora.bench.report_runs import lr_sensitivity_rows

    def record(arm, lr, seed, selection, dev, task="cola"):
        return {"task": task, "method": "dynamic", "targets": "all-linear", "seed": seed, "lr": lr,
                "method_options": {}, "settings": {"rank": 8}, "arm": arm,
                "selection_score": selection, "dev": {"glue": dev}}

    records = [record("dynamic", 1e-3, s, v, 0.24) for s, v in enumerate([0.33, 0.33, 0.32, 0.35])]
    records += [record("dynamic:lora-lr", 3e-4, s, v, 0.31) for s, v in enumerate([0.36, 0.39, 0.31])]
    records.append(record("dynamic", 3e-3, 0, 0.90, 0.9))  # one seed at that lr: not compared
    records.append(record("dynamic", 3e-4, 0, 0.10, 0.1, task="mrpc"))  # another task, one lr
    rows = {r["lr"]: r for r in lr_sensitivity_rows(records)}
    assert set(rows) == {"0.0003", "0.001"}
    assert rows["0.0003"]["seeds"] == "0,1,2" and rows["0.0003"]["selection (mean)"] == "35.33"
    assert rows["0.0003"]["selection picks"] == "yes" and rows["0.001"]["selection picks"] == ""
    assert rows["0.0003"]["seeds where it is best"] == 2 and rows["0.001"]["seeds where it is best"] == 1
    assert rows["0.001"]["selection (mean)"] == "32.67" and rows["0.001"]["dev (mean)"] == "24.00"  # seed 3 left out


def test_the_glance_table_falls_back_to_the_reference_and_says_how_many_tasks_an_average_spans():
    five = paired([0.02, -0.01, 0.03, 0.01, 0.02])
    results = [("dynamic-r2", "cola", five), ("dynamic-r2", "average (1 tasks)", five)]
    no_shared_seeds = [("dynamic-r2", "cola", paired([]), "lora-r2")]
    rows = paired_wide_rows(results + no_shared_seeds, ["mrpc", "cola"], ["dynamic-r2"], "lora")
    assert len(rows) == 1 and rows[0]["minus"] == "lora"  # its own reference shares no seed
    assert rows[0]["average"].endswith("(n=5, 1/2 tasks)")
    near_zero = paired([0.0004, -0.0004, 0.0002])
    assert paired_wide_rows([("a", "cola", near_zero)], ["cola"], ["a"], "lora")[0]["cola"].startswith("+0.0 ")


@pytest.mark.parametrize("n, bottoms", [(1, [(0, 0)]), (3, [(2, 0)]), (4, [(1, 0), (1, 1)]),
                                        (5, [(2, 0), (1, 1)]), (7, [(3, 0), (2, 1)])])
def test_each_column_of_the_paired_figure_has_its_axis_on_its_lowest_panel(n, bottoms):
    rows, cols, found = panel_grid(n)
    assert found == bottoms and rows * cols >= n and cols == (1 if n <= 3 else 2)


def test_lr_sensitivity_keeps_the_lrs_that_share_seeds_and_marks_ties():
    from dynalora.bench.report_runs import lr_sensitivity_rows

    def record(lr, seed, selection, options):
        return {"task": "mrpc", "method": "lora", "targets": "all-linear", "seed": seed, "lr": lr,
                "method_options": options, "settings": {"rank": 8}, "arm": "lora",
                "selection_score": selection, "dev": {"glue": float("nan")}}

    records = [record(1e-3, s, 0.80, {}) for s in range(5)]
    records += [record(3e-4, s, 0.80, None) for s in range(5)]  # no options: the same configuration
    records += [record(3e-3, s, 0.70, {}) for s in (5, 6)]  # shares no seed: left out, not fatal
    records.append(record(1e-4, 0, float("nan"), {}))
    rows = {r["lr"]: r for r in lr_sensitivity_rows(records)}
    assert set(rows) == {"0.0003", "0.001"} and rows["0.001"]["seeds"] == "0,1,2,3,4"
    assert rows["0.001"]["selection picks"] == rows["0.0003"]["selection picks"] == "yes (tie)"
    assert rows["0.001"]["seeds where it is best"] == 0  # a tie is nobody's win
    assert rows["0.001"]["dev (mean)"] == "0.00"  # an undefined dev score counts as 0, as elsewhere


def test_the_summary_shows_the_preset_arms_by_name_with_the_majority_line_and_table2(tmp_path):
    from dynalora.bench.report_summary import summary_text

    table1 = [{"arm": "lora", "mrpc": "84.10 ± 1.45 (n=5)", "GLUE average": "84.10"},
              {"arm": "dynamic:lora-lr", "mrpc": "84.13 ± 1.58 (n=3)", "GLUE average": "84.13"}]
    wide = [{"arm": "dynamic", "minus": "lora", "mrpc": "-2.0 [-4.0, -0.1] (n=5)", "average": "-2.0 (n=5)"},
            {"arm": "dynamic-r2", "minus": "lora-r2", "mrpc": "+1.0 (n=1)", "average": "+1.0 (n=1)"}]
    (tmp_path / "table2.csv").write_text(
        "arm,rounds,s_per_step,latency_b1_ms,latency_b32_ms,trainable_share_pct,peak_rss_mb\n"
        "lora,3,1.0,32.0,900,1.443,1600\nhead,3,0.4,33.0,940,0.0034,800\n")
    text = summary_text(table1, wide, ["mrpc"], {"mrpc": 74.8}, "lora", tmp_path / "table2.csv")
    assert "| LoRA | 84.10 ± 1.45 (n=5) | 84.10 |" in text and "lora-lr" not in text  # pre-set arms only
    assert "| majority class | 74.80 |  |" in text
    assert "| dynamic LoRA | −2.0 [−4.0, −0.1] (n=5) | −2.0 (n=5) |" in text and "lora-r2" not in text
    assert "| feature extraction (head) | 0.40 | 0.40 | 33.0 | 940 | 0.003 | 800 |" in text
    assert "Table 2" not in summary_text(table1, wide, ["mrpc"], {"mrpc": None}, "lora", tmp_path / "none.csv")


def test_the_dot_plot_draws_an_undefined_dev_score_as_the_tables_count_it(tmp_path):
    from dynalora.bench.report_plots import dot_plot

    runs = [{"task": "stsb", "arm": "lora", "seed": s, "dev": {"glue": v}} for s, v in enumerate([0.86, float("nan"), None])]
    path = dot_plot(runs, ["stsb"], ["lora"], {"stsb": "Pearson"}, {"stsb": 0.0}, tmp_path / "dots.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # None and NaN count as 0, as in Table 1
