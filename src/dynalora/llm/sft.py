"""Instruction tuning (SFT) of a causal LM with LoRA, dynamic LoRA or Rank-1 Sum LoRA.

    metrics = train_sft(SftConfig(data="gsm8k/train.jsonl", eval_data="gsm8k/test.jsonl",
                                  method="dynamic", max_train_samples=400, output="runs/sft"))

It runs the same pipeline as classification (dynalora.training.run: same run folder,
checkpoints and --resume, log.jsonl, curves.png, allocation report for dynamic/rank1); only
the objective differs (dynalora.llm.objective: next-token cross-entropy on response tokens,
judged by the held-out response loss and perplexity, lower is better). The run folder is also the adapter folder:
`dynalora generate --adapter runs/sft` finds the base model from what it records.

To show what training changed, the held-out loss is measured before the first step and after
the last (`initial_metrics` / `metrics` in metrics.json), and the first `samples` held-out
prompts are answered by the base model and by the saved adapter (samples.jsonl, report.md);
for GSM8K-style answers (`#### <number>`) the first `exact_match_samples` are also scored by
exact match before and after (`exact_match` in metrics.json). See `dynalora.llm.report`.

The best checkpoint is the one with the lowest held-out loss unless `metric_for_best_model`
names a generation metric (exact_match, ended, looping, ...), measured at every evaluation on
`eval_generation_samples` fixed held-out prompts (dynalora.llm.selection); those prompts are
then left out of the report's, which judge the chosen model on prompts that did not choose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dynalora import __version__
from dynalora.adapters.config import ConfigError, check
from dynalora.data.base import skipped_rows_limit
from dynalora.data.glue import subsample
from dynalora.data.sft import PRESETS, SftRecord, encode_sft, load_sft_records, pack_features
from dynalora.distributed import current
from dynalora.files import write_json
from dynalora.llm.evaluate import is_gsm8k_style
from dynalora.llm.generate import Generation, GenerationSettings
from dynalora.llm.models import PACKAGED, load_causal_lm, sft_targets
from dynalora.llm.objective import LanguageModelObjective
from dynalora.llm.report import (
    REPORT_FILE,
    SAMPLES_FILE,
    answer_before_and_after,
    exact_match,
    judge,
    read_samples,
    reuse_before,
    write_report,
    write_samples,
)
from dynalora.llm.selection import (
    DEFAULT_GENERATION_PROMPTS,
    GENERATION_FIELDS,
    GENERATION_METRICS,
    GenerationJudge,
    check_metric_data,
    greater_is_better,
    metric_name,
    pick_selection_records,
    prompt_key,
)
from dynalora.packaged import portable_name
from dynalora.training.loop import TrainingLoop
from dynalora.training.methods import get_method
from dynalora.training.optim import pick_device, pick_dtype, seed_everything, total_steps
from dynalora.training.report import RunLog
from dynalora.training.run import (
    RunSetup,
    claim_run,
    fit_max_length,
    make_batches,
    open_run_folder,
    publish_report,
    run_loop,
    start_run_folder,
    summary,
)
from dynalora.training.run_config import RunConfig, override, setting

SFT_METHODS = ("lora", "dynamic", "rank1")
DEFAULT_LR = 2e-4  # the usual LoRA SFT learning rate for decoders (1e-3, the encoder default, is too hot)
RUN_FILE = "dynalora_sft_run.json"
RUN_FORMAT = "dynalora-sft-run"
HELD_OUT_SHARE, HELD_OUT_MAX = 0.05, 200  # evaluation records taken from --data when no --eval-data
BEST_ADAPTER = "best"  # the saved adapter, loaded back beside the trained one to answer the samples
# Settings of what is written after training: changing them never stops a run from resuming.
REPORT_FIELDS = ("samples", "exact_match_samples", "max_new_tokens", "generation_samples", "repetition_penalty",
                 "penalize_prompt", "no_repeat_ngram_size", "stop", "baseline_samples")


@dataclass
class SftConfig(RunConfig):
    """One instruction-tuning run of a causal LM (the fields are `dynalora sft`'s flags)."""

    # A causal LM has no task head to train beside the adapters (read by lora_config_for).
    modules_to_save: ClassVar[list[str] | None] = None

    method: str = override("method", "lora", "lora, dynamic or rank1")
    model: str | None = override("model", None, "base causal LM: a Hugging Face folder, a .gguf file or a Hub id; "
                                                "default: the packaged SmolLM2-135M-Instruct")
    output: str = override("output", "runs/sft")
    epochs: float = override("epochs", 1.0)
    batch_size: int = override("batch_size", 4, "sequences per micro-batch")
    eval_batch_size: int = override("eval_batch_size", 8, "sequences per evaluation batch")
    lr: float | None = override("lr", None, f"peak learning rate; default {DEFAULT_LR}")
    weight_decay: float = override("weight_decay", 0.0, "AdamW weight decay (never applied to biases and gates)")
    max_length: int = setting(512, "tokens per sequence; longer records are truncated (reported in the log)", min=2)
    dropout: float = override("dropout", 0.05)
    target_modules: list[str] | None = override("target_modules", None, "modules to adapt; default: every "
                                                                        "attention and MLP projection")
    data: str = setting("", "training data: JSONL (or a JSON list) of prompt/response records or of "
                              "conversations ('messages')")
    eval_data: str | None = setting(None, "held-out records for loss/perplexity; default: a held-out 5 percent "
                                          "of --data (at most 200)")
    packing: bool = setting(False, "pack several records into each training sequence (fewer pad tokens)")
    preset: str | None = setting(None, "record layout, which sets the prompt / response / input fields: "
                                       + "; ".join(f"{name}: {'/'.join(f for f in fields if f)}"
                                                   for name, fields in PRESETS.items())
                                       + "; messages: a list of role/content turns; default: detected from "
                                         "the first record", choices=(*PRESETS, "messages"))
    prompt_field: str | None = setting(None, "field holding the prompt (overrides the preset)")
    response_field: str | None = setting(None, "field holding the response (overrides the preset)")
    input_field: str | None = setting(None, "optional field appended to the prompt (Alpaca's 'input')")
    samples: int = setting(3, "held-out prompts answered by the base model and by the trained adapter, written "
                              "to samples.jsonl and report.md; 0 for none", min=0)
    exact_match_samples: int | None = setting(None, "held-out records with GSM8K-style answers ('#### <number>') "
                                                    "scored by exact match before and after training; default: "
                                                    "all the answered prompts when the data has such answers; 0 "
                                                    "for none", min=0)
    max_new_tokens: int = setting(256, "token limit of those answers", positive=True)
    generation_samples: int = setting(200, "held-out prompts answered before and after training and judged: the "
                                           "share of answers that end (end-of-turn or '#### n') and that loop, "
                                           "exact match for GSM8K-style data (at most the held-out set)", min=0)
    repetition_penalty: float | None = setting(GenerationSettings.repetition_penalty,
                                               "repetition penalty of those answers, on the answer's own tokens "
                                               "(1: none); the default is `dynalora generate`'s")
    penalize_prompt: bool = setting(False, "let the repetition penalty count the prompt's tokens too, as "
                                           "transformers' generate does (default: the answer's tokens only)")
    no_repeat_ngram_size: int | None = setting(None, "never repeat an n-gram of this many tokens in those answers")
    stop: list[str] = setting([], "stop strings that end those answers (several after one flag: --stop A B)",
                              metavar="TEXT")
    baseline_samples: str | None = setting(None, "samples.jsonl of an earlier run on the same held-out prompts and "
                                                 "generation settings: reuse its base-model answers")
    strip_calculator: bool | None = setting(None, "remove <<a=b>> calculator annotations (GSM8K's) from the "
                                                  "answers, in every layout when on (the model has no calculator "
                                                  "when it generates); default: on for the gsm8k layout (given "
                                                  "or detected), off for others, where << >> may be real text")
    metric_for_best_model: str = setting("loss", "what chooses the saved checkpoint and drives early stopping: "
                                                 "loss or perplexity (held-out), or a generation metric measured "
                                                 "at each evaluation on --eval-generation-samples fixed held-out "
                                                 "prompts: exact_match (GSM8K-style answers), ended, stopped, "
                                                 "answer_marker, or looping (lower is better)")
    greater_is_better: bool | None = setting(None, "whether a higher metric_for_best_model is better; default: "
                                                   "from the metric (loss, perplexity and looping: lower)")
    eval_generation_samples: int | None = setting(None, "held-out prompts answered at each evaluation for the "
                                                        "generation metrics (the same ones at every evaluation "
                                                        "and for every seed, never a training prompt); default: "
                                                        f"{DEFAULT_GENERATION_PROMPTS} when metric_for_best_model "
                                                        "is a generation metric, else 0", min=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.data), "data", "is required (a JSONL file of prompt/response records)", self.data)
        check(self.method in SFT_METHODS, "method", f"must be one of {SFT_METHODS} for SFT", self.method)
        self.generation_settings()  # one-line errors for bad generation values
        self.metric_for_best_model = metric_name(self.metric_for_best_model)
        check(self.metric_for_best_model not in GENERATION_METRICS or self.eval_generation_samples != 0,
              "eval_generation_samples", f"must be positive to choose by {self.metric_for_best_model}",
              self.eval_generation_samples)

    def selection_prompts(self) -> int:
        """How many held-out prompts are answered at each evaluation (0: none)."""
        if self.eval_generation_samples is not None:
            return self.eval_generation_samples
        return DEFAULT_GENERATION_PROMPTS if self.metric_for_best_model in GENERATION_METRICS else 0

    def generation_settings(self) -> GenerationSettings:
        """How the held-out answers of the report are decoded (greedy)."""
        return GenerationSettings(self.max_new_tokens, repetition_penalty=self.repetition_penalty,
                                  penalize_prompt=self.penalize_prompt, no_repeat_ngram_size=self.no_repeat_ngram_size, stop=self.stop)


def read_records(config: SftConfig, path: str) -> list[SftRecord]:
    return load_sft_records(path, config.prompt_field, config.response_field, config.input_field, config.preset,
                            strip_calculator_annotations=config.strip_calculator)


def split_records(config: SftConfig) -> tuple[list[SftRecord], list[SftRecord], list[SftRecord]]:
    """Training, evaluation and selection records: evaluation is --eval-data or a seeded held-out
    slice of --data; selection, the prompts answered at each evaluation, a fixed draw from
    --eval-data (leaving out the prompts of --data) or else from --data (then not trained on)."""
    train = read_records(config, config.data)
    wanted = config.selection_prompts()
    if config.eval_data:
        evaluation = read_records(config, config.eval_data)
        selection = pick_selection_records(evaluation, wanted, train) if wanted else []
        if wanted and not selection:
            raise ConfigError(f"eval_data: every held-out prompt of {config.eval_data} is also in --data; "
                              "generation metrics need prompts the model does not train on")
    else:
        selection = pick_selection_records(train, wanted) if wanted else []
        chosen = {prompt_key(r) for r in selection}
        train = [r for r in train if prompt_key(r) not in chosen]
        if wanted and len(train) < 2:
            raise ConfigError(f"eval_generation_samples={wanted}: leaves too few of the --data records to train "
                              "on; pass --eval-data or ask for fewer")
        n_eval = max(1, min(HELD_OUT_MAX, round(HELD_OUT_SHARE * len(train))))
        if len(train) < 2:
            raise ConfigError(f"eval_data: --data has {len(train)} record(s), too few to hold some out; pass --eval-data")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
        held = set(order[:n_eval])
        evaluation = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
    return (subsample(train, config.max_train_samples, config.seed),
            subsample(evaluation, config.max_eval_samples, config.seed), selection)


def report_records(config: SftConfig, evaluation: list[SftRecord]) -> tuple[list[SftRecord], int]:
    """(held-out records answered before and after training, how many of the first to score).

    Exact match needs a `#### <number>` reference in every scored record: asked for explicitly
    on other data it is an error (raised before training); by default it is simply skipped.
    """
    wanted = config.exact_match_samples
    answered = evaluation[: max(config.samples, config.generation_samples, wanted or 0)]
    if wanted is None:
        scored = len(answered) if is_gsm8k_style(answered) else 0
    else:
        scored = wanted
    records = evaluation[: max(len(answered), scored)]
    if wanted and not is_gsm8k_style(records):
        raise ConfigError(f"exact_match_samples={wanted}: the held-out answers do not all end in "
                          f"'#### <number>' (e.g. {records[0].where}); exact match is for GSM8K-style data")
    return records, min(scored, len(records))


def baseline_answers(config: SftConfig, records: list[SftRecord]) -> list[Generation] | None:
    """The base model's answers reused from --baseline-samples, checked before any training."""
    if not config.baseline_samples:
        return None
    try:
        return reuse_before(read_samples(config.baseline_samples), records, config.generation_settings())
    except ValueError as err:
        raise ConfigError(f"baseline_samples: {err}") from None


def answer_with_saved_adapter(prepared: Any, folder: Path, tokenizer: Any, records: list[SftRecord],
                              config: SftConfig, before: list[Generation] | None) -> list[dict[str, Any]]:
    """Base-model and saved-adapter answers (the saved adapter is the best evaluation, which
    need not be the last step's state: it is loaded back beside the trained one for this)."""
    wrapper = prepared.wrapper
    trained = wrapper.active_adapter
    wrapper.load_adapter(folder, BEST_ADAPTER)
    wrapper.set_adapter(BEST_ADAPTER)
    try:
        return answer_before_and_after(wrapper, tokenizer, records, config.generation_settings(),
                                       config.eval_batch_size, before)
    finally:
        wrapper.set_adapter(trained)
        wrapper.delete_adapter(BEST_ADAPTER)


def run_metadata(config: SftConfig, lr: float, source: str) -> dict[str, Any]:
    """Recorded with the adapter: enough for `dynalora generate --adapter DIR` to rebuild it."""
    return {"kind": "sft", "base_model": source, "method": config.method, "max_length": config.max_length,
            "rank": config.rank, "alpha": config.alpha, "lr": lr, "data": config.data,
            "eval_data": config.eval_data, "seed": config.seed, "dynalora_version": __version__}


def train_sft(config: SftConfig, callbacks: list[Any] | None = None, model: Any = None,
              tokenizer: Any = None) -> dict[str, Any]:
    """Instruction-tune, write the run folder, return metrics.json's content.

    `model` / `tokenizer` may be passed in (already loaded, e.g. a tiny test model); the
    adapter then records `config.model` (or the model's `dynalora_source`) as its base.
    """
    method = get_method(config.method)
    lr = config.lr or DEFAULT_LR
    run = open_run_folder(config)  # checked first; nothing in it changes before `claim`

    seed_everything(config.seed)
    with skipped_rows_limit(config.max_skipped_share):
        train_records, eval_records, selection_records = split_records(config)
    metric = config.metric_for_best_model
    check_metric_data(metric, selection_records)
    # the prompts that choose the checkpoint do not also judge it in the report
    chosen_on = {prompt_key(r) for r in selection_records}
    sample_records, n_scored = report_records(config, [r for r in eval_records if prompt_key(r) not in chosen_on])
    before = baseline_answers(config, sample_records)
    if model is None or tokenizer is None:
        model, tokenizer = load_causal_lm(config.model)
    source = config.model or getattr(model, "dynalora_source", None) or PACKAGED
    config = fit_max_length(config, getattr(model, "config", None), source)
    train_features, train_report = encode_sft(train_records, tokenizer, config.max_length)
    eval_features, eval_report = encode_sft(eval_records, tokenizer, config.max_length)
    if config.packing:
        train_features = pack_features(train_features, config.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_batches, eval_batches = make_batches(train_features, eval_features, config, pad)
    device = pick_device(config.device)
    dtype = pick_dtype(config.precision, device)

    torch.manual_seed(config.seed)  # adapter initialisation depends on the seed only
    steps = total_steps(len(train_batches), config.grad_accum, config.epochs)
    targets = config.target_modules or sft_targets(model)
    prepared = method.prepare(model, config.replace(target_modules=targets), steps)
    prepared.model.to(device)
    prepared.wrapper.tokenizer = tokenizer  # save_merged writes it beside the weights
    judge_each_eval = GenerationJudge(tokenizer, selection_records, config.generation_settings(),
                                      config.eval_batch_size) if selection_records else None
    higher = greater_is_better(metric, config.greater_is_better)
    objective = LanguageModelObjective(Path(config.data).stem, judge_each_eval, metric, higher)
    setup = RunSetup(prepared, objective, train_batches, eval_batches, device, dtype, lr, lr, RUN_FILE,
                     RUN_FORMAT, run_metadata(config, lr, source))
    # answers judged during training must keep their settings when the run resumes
    free = tuple(f for f in REPORT_FIELDS if not (judge_each_eval and f in GENERATION_FIELDS))

    def data_and_base_model(loop: TrainingLoop, log: RunLog) -> None:
        log.write({"kind": "data", "step": 0, "train": train_report.to_dict(), "eval": eval_report.to_dict(),
                   "train_sequences": len(train_features), "packing": config.packing,
                   "selection": [r.where for r in selection_records]})
        log.write({**loop.evaluate(), "initial": True})  # the base model, before any step

    with claim_run(run, config):  # held to the last file
        checkpoint = start_run_folder(config, run, also_free=free)
        outcome = run_loop(config, setup, run, checkpoint, callbacks, data_and_base_model)
        initial = next(r for r in outcome.records if r.get("initial"))
        metrics = {
            "task": "sft", "data": config.data, "method": config.method, "split": "eval", **summary(outcome),
            "initial_metrics": initial["metrics"], "metric_for_best_model": metric,
            "best_metric": outcome.best["metrics"][metric], "greater_is_better": higher,
            "eval_generation_samples": len(selection_records), "truncated_train_records": train_report.truncated,
            "dropped_train_records": train_report.dropped_no_response, "ranks": prepared.wrapper.ranks(),
        }
        out = Path(config.output)
        publish_report(out, metrics, outcome, title=f"SFT: {config.method} on {portable_name(source)}")
        if not current().is_main:  # distributed: the samples and the report are the main process's
            return metrics
        samples = answer_with_saved_adapter(prepared, out, tokenizer, sample_records, config, before) if sample_records else []
        if samples:
            write_samples(out / SAMPLES_FILE, samples)
        if n_scored:
            metrics["exact_match"] = exact_match(samples[:n_scored])
        if samples:
            judged = samples[: config.generation_samples] or samples
            metrics["generation"] = {**judge(judged), "settings": config.generation_settings().to_dict()}
            write_json(out / "metrics.json", metrics)
        write_report(out / REPORT_FILE, metrics, source, samples[: config.samples])
    return metrics
