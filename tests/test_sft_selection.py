"""SFT checkpoint choice and early stopping by a generation metric (metric_for_best_model)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_chat_tokenizer, tiny_llama

from dynalora.adapters import DynaLoraModel
from dynalora.adapters.config import ConfigError
from dynalora.cli.main import main
from dynalora.llm.generate import GenerationSettings
from dynalora.llm.selection import GenerationJudge, prompt_key
from dynalora.llm.sft import SftConfig, read_records, split_records, train_sft

# One answer for every prompt: learnt in a few steps, so the held-out prompts (other
# questions) are answered right, and end, long before the held-out loss stops falling.
ANSWER = "#### 7"
TRAIN = [{"question": f"q{i}", "answer": ANSWER} for i in range(12)]
HELD_OUT = [{"question": f"x{i}", "answer": ANSWER} for i in range(6)] + [TRAIN[0]]  # one training prompt


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", TRAIN), write_jsonl(tmp_path / "held.jsonl", HELD_OUT)


def confident_llama():
    """tiny_llama with its (frozen) output layer scaled up: at the random init a 32-wide head
    only tilts the next-token distribution (logits within about +-0.6), so greedy answers would
    not follow what the adapters learn in a few steps."""
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


def config(files, out, **kw) -> SftConfig:
    train, held = files
    settings = {"data": str(train), "eval_data": str(held), "output": str(out), "model": "tiny",
                "max_length": 32, "batch_size": 4, "lr": 1e-2, "progress": False, "dropout": 0.0,
                "warmup_ratio": 0.0, "max_new_tokens": 6, "epochs": 4, "eval_every": 1,
                "samples": 2, "generation_samples": 0, **kw}
    return SftConfig(**settings)


def run(cfg: SftConfig, callbacks=None):
    return train_sft(cfg, callbacks, model=confident_llama(), tokenizer=tiny_chat_tokenizer())


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def evaluations(out):
    """The evaluations that could be chosen (not the base model's, measured before step 1)."""
    return [r for r in read_log(out) if r["kind"] == "eval" and not r.get("initial")]


def first_best(records, metric, greater):
    values = [r["metrics"][metric] for r in records]
    best = max(values) if greater else min(values)
    return records[values.index(best)]  # a tie is no improvement: the first one stays


def test_a_generation_metric_chooses_the_checkpoint(files, tmp_path):
    out = tmp_path / "ended"
    metrics = run(config(files, out, metric_for_best_model="eval_ended", eval_generation_samples=4))
    records = evaluations(out)
    assert all({"ended", "exact_match", "looping", "stopped", "generation_n"} <= set(r["metrics"]) for r in records)
    chosen = first_best(records, "ended", greater=True)
    assert metrics["best_step"] == chosen["step"] and metrics["metrics"] == chosen["metrics"]
    assert (metrics["metric_for_best_model"], metrics["greater_is_better"]) == ("ended", True)
    assert metrics["best_metric"] == chosen["metrics"]["ended"] == json.loads((out / "metrics.json").read_text())[
        "best_metric"]
    # the loss would have chosen a later step (the constructed case)
    assert first_best(records, "loss", greater=False)["step"] > metrics["best_step"]

    # the selection prompts: 4 held-out ones, never the training prompt; the report judges the others
    data_record = read_log(out)[0]
    selection = [r for r in read_records(config(files, out), str(files[1])) if r.where in data_record["selection"]]
    assert len(selection) == 4 and all(r.prompt.startswith("x") for r in selection)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and not {s["prompt"] for s in samples} & {r.prompt for r in selection}
    assert f"best ended = {chosen['metrics']['ended']:.3f}" in (out / "report.md").read_text()

    # the saved adapter is the chosen evaluation's model: it answers the selection prompts alike
    saved = DynaLoraModel.from_pretrained(confident_llama(), out)
    judge = GenerationJudge(tiny_chat_tokenizer(), selection, GenerationSettings(max_new_tokens=6), 8)
    again = judge(saved)
    assert {k: chosen["metrics"][k] for k in again} == again

    # with the default (the loss) the same steps train and the loss chooses
    by_loss = run(config(files, tmp_path / "loss"))
    loss_records = evaluations(tmp_path / "loss")
    assert [r["metrics"]["loss"] for r in loss_records] == pytest.approx([r["metrics"]["loss"] for r in records])
    assert "ended" not in loss_records[0]["metrics"]  # no generation unless asked for
    assert by_loss["best_step"] == first_best(loss_records, "loss", greater=False)["step"] != metrics["best_step"]
    assert (by_loss["metric_for_best_model"], by_loss["best_metric"]) == ("loss", by_loss["metrics"]["loss"])


def test_a_generation_metric_drives_early_stopping(files, tmp_path):
    out = tmp_path / "stop"
    metrics = run(config(files, out, metric_for_best_model="exact_match", eval_generation_samples=4,
                         early_stopping_patience=3))
    records = evaluations(out)
    assert metrics["stopped_early"] and metrics["steps"] < metrics["total_steps"]
    # stopped at the third evaluation in a row that did not beat the best exact match, although
    # the loss improved in between (it alone would have gone on)
    chosen = first_best(records, "exact_match", greater=True)
    assert records[0]["metrics"]["exact_match"] < chosen["metrics"]["exact_match"]
    assert metrics["best_step"] == chosen["step"] and metrics["steps"] == chosen["step"] + 3
    assert records[-1]["step"] == metrics["steps"]
    assert first_best(records, "loss", greater=False)["step"] > chosen["step"]


def test_a_resumed_run_keeps_the_choice(files, tmp_path):
    class Crash:
        def on_step_end(self, step):
            if step == 7:
                raise KeyboardInterrupt

    options = {"metric_for_best_model": "ended", "eval_generation_samples": 4, "checkpoint_every": 1}
    full = run(config(files, tmp_path / "full", **options))
    with pytest.raises(KeyboardInterrupt):
        run(config(files, tmp_path / "cut", **options), [Crash()])
    assert full["best_step"] < 7  # the best was chosen before the crash and must survive it
    with pytest.raises(ConfigError, match="max_new_tokens"):  # it decides the metric: fixed for the run
        run(config(files, tmp_path / "cut", resume=True, **{**options, "max_new_tokens": 5}))
    with pytest.raises(ConfigError, match="metric_for_best_model"):
        run(config(files, tmp_path / "cut", resume=True, **{**options, "metric_for_best_model": "loss"}))
    resumed = run(config(files, tmp_path / "cut", resume=True, **options))
    for key in ("best_step", "best_metric", "metrics", "metric_for_best_model"):
        assert resumed[key] == full[key], key


def test_the_selection_prompts_are_fixed_and_never_trained_on(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(40)]
    data = write_jsonl(tmp_path / "all.jsonl", rows)
    splits = [split_records(SftConfig(data=str(data), seed=seed, metric_for_best_model="exact_match",
                                      eval_generation_samples=5)) for seed in (0, 1)]
    assert [r.prompt for r in splits[0][2]] == [r.prompt for r in splits[1][2]]  # the same for every seed
    assert splits[0][0] != splits[1][0]  # while the seeded held-out split differs
    for train, evaluation, selection in splits:
        assert len(selection) == 5
        assert not {prompt_key(r) for r in selection} & {prompt_key(r) for r in train + evaluation}
    assert split_records(SftConfig(data=str(data)))[2] == []  # the loss needs no generation


def test_metrics_the_data_cannot_give_are_one_line_errors(files, tmp_path, capsys):
    with pytest.raises(ConfigError, match="metric_for_best_model='bleu': must be one of"):
        SftConfig(data="d.jsonl", metric_for_best_model="bleu")
    with pytest.raises(ConfigError, match="eval_generation_samples=0"):
        SftConfig(data="d.jsonl", metric_for_best_model="ended", eval_generation_samples=0)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"question": f"double {n}", "answer": str(2 * n)}
                                                   for n in range(8)])
    with pytest.raises(ConfigError, match=r"exact_match.*'#### <number>'"):
        run(config((files[0], plain), tmp_path / "refused", metric_for_best_model="exact_match"))
    assert not (tmp_path / "refused").exists()  # refused before any training
    with pytest.raises(ConfigError, match="eval_data: every held-out prompt"):
        run(config((files[0], files[0]), tmp_path / "same", metric_for_best_model="ended"))
    assert main(["sft", "--data", str(files[0]), "--metric-for-best-model", "bleu", "--output",
                 str(tmp_path / "cli")]) == 2
    error = capsys.readouterr().err.strip()
    assert "metric_for_best_model='bleu'" in error and len(error.splitlines()) == 1
    parsed = SftConfig.from_dict({"data": "d.jsonl", "metric_for_best_model": "looping"})
    assert parsed.greater_is_better is None and parsed.selection_prompts() == 32


def test_the_flags_take_transformers_values():
    import argparse

    from dynalora.cli.train import add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_config_flags(parser, SftConfig)

    def parsed(*flags):
        return config_from_args(parser.parse_args(["--data", "d.jsonl", *flags]), SftConfig)

    assert (parsed().metric_for_best_model, parsed().greater_is_better, parsed().selection_prompts()) == ("loss", None, 0)
    chosen = parsed("--metric-for-best-model", "eval_exact_match", "--no-greater-is-better",
                    "--eval-generation-samples", "8")
    assert (chosen.metric_for_best_model, chosen.greater_is_better, chosen.selection_prompts()) == ("exact_match", False, 8)
    assert parsed("--greater-is-better").greater_is_better is True
