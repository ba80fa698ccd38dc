"""benchmarks/bench_multi_adapter.py on a tiny LLaMA: it checks the two ways agree, then times them."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, tiny_chat_tokenizer, tiny_llama

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_multi_adapter as bench

TINY_ARGS = ["--repeats", "2", "--warmup", "0", "--batch", "4", "--adapters", "2", "--seq", "10",
             "--gen-prompt", "4", "--new-tokens", "3"]


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    tiny_chat_tokenizer().save_pretrained(folder)
    return folder


def test_benchmark_checks_outputs_and_writes_its_results(model_dir, tmp_path):
    out = tmp_path / "multi.json"
    result = bench.main(["--model", str(model_dir), *TINY_ARGS, "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    cases = ["per_row_prefill", "sequential_prefill", "one_adapter_prefill", "per_row_generate",
             "sequential_generate"]
    assert sorted(result["times"]) == sorted(cases) and all(len(result["times"][c]) == 2 for c in cases)
    assert result["row_adapters"] == ["0", "1", "0", "1"]
    assert result["tokens_per_call"]["per_row_prefill"] == 4 * 10
    assert result["tokens_per_call"]["sequential_generate"] == 4 * 3
    for case in cases:
        expected = result["tokens_per_call"][case] / result["median_seconds"][case]
        assert result["tokens_per_second"][case] == pytest.approx(expected)
    assert result["ratios"]["per_row_prefill / sequential_prefill"] == pytest.approx(
        result["median_seconds"]["per_row_prefill"] / result["median_seconds"]["sequential_prefill"])
    checks = result["checks"]
    assert checks["prefill_max_abs_diff"] <= 1e-3 and checks["generated_tokens_equal"]
    assert checks["prefill_max_abs_diff_vs_one_adapter"] > 0.01  # the adapters really differ
    assert "--repeats 2" in result["command"] and result["machine"]["torch"]


def test_benchmark_refuses_ways_that_disagree(model_dir, tmp_path, monkeypatch):
    # "sequential" secretly running every row through adapter 0 must be caught before timing
    monkeypatch.setattr(bench, "prefill_sequential", bench.prefill_one_adapter)
    with pytest.raises(AssertionError, match="per-row and sequential logits differ"):
        bench.main(["--model", str(model_dir), *TINY_ARGS, "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
