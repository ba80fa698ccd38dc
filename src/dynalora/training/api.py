"""`train`, `evaluate`, `load_trained`: a fine-tuning run from data to saved model and back.

A run folder holds
    best/                             the best model so far, replaced whole (dynalora.runs):
        dynalora_run.json             what was trained on what (metadata) and the best evaluation
        dynalora_config.json + dynalora_adapter.safetensors    LoRA-family methods (adapter format)
        trained_state.safetensors     the other methods (their trainable tensors)
    metrics.json, log.jsonl, curves.png, checkpoints/, allocation.json/png (dynamic, rank1)
The saved model is the best one by the task's GLUE score on the evaluation split: GLUE dev,
or with selection="split" the task's selection split (then dev is evaluated once, at the end,
on that model). Either way `evaluate(folder)` reproduces metrics.json's dev figures exactly
(same data, batches and precision).
Only one run writes a folder at a time (a lock), and nothing in it changes before every
input has been checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora import __version__
from dynalora.adapters.adapter_file import CONFIG_FILE
from dynalora.data import (
    BucketBatcher,
    DataError,
    Example,
    TaskSpec,
    encode,
    get_task,
    load_split,
    load_table,
)
from dynalora.data.base import skipped_rows_limit
from dynalora.data.glue import subsample
from dynalora.data.selection import SELECTION_SEED, split_for_selection
from dynalora.errors import ConfigError, RunFolderError
from dynalora.files import read_json
from dynalora.packaged import portable_name
from dynalora.runs import reading, results_folder
from dynalora.training.classifier import build_classifier, resolve_model
from dynalora.training.config import TrainConfig
from dynalora.training.evaluation import CachedFeatures, predict
from dynalora.training.methods import get_method
from dynalora.training.metrics import compute_metrics
from dynalora.training.objective import ClassificationObjective
from dynalora.training.optim import pick_device, pick_dtype, seed_everything, total_steps
from dynalora.training.run import (  # noqa: F401  (RESUME_FREE etc.: also importable from here, as before)
    RESUME_FREE,
    RunSetup,
    check_resumable,
    claim_run,
    count_parameters,
    fit_max_length,
    make_batches,
    open_run_folder,
    publish_report,
    run_loop,
    start_run_folder,
    summary,
)

RUN_FILE = "dynalora_run.json"
RUN_FORMAT = "dynalora-run"
SFT_RUN_FILE = "dynalora_sft_run.json"  # dynalora.llm.sft.RUN_FILE (not imported: it loads the LLM stack)


def load_tokenizer(model_path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no usable tokenizer in {model_path}: {str(err).splitlines()[0]}") from None


def own_task(name: str, text_columns: list[str], labels: tuple[str, ...] | None) -> TaskSpec:
    return TaskSpec(name=name, text_fields=tuple(text_columns), labels=labels)


def data_seed(config: TrainConfig) -> int:
    """Seed of the max_*_samples subsets: the run's own, or with a selection split a fixed one,
    so that every seed and method of a comparison trains and is judged on the same rows."""
    return SELECTION_SEED if config.selection == "split" else config.seed


def load_data(config: TrainConfig) -> tuple[TaskSpec, list[Example], list[Example]]:
    """The task and its train / dev examples (GLUE, or the user's own files). With a selection
    split the training rows are all of them: max_train_samples applies after the split."""
    seed = data_seed(config)
    train_limit = None if config.selection == "split" else config.max_train_samples
    if config.train_file is None:
        task = get_task(config.task)
        train = load_split(task, "train", config.data_dir, train_limit, seed)
        dev = load_split(task, "dev", config.data_dir, config.max_eval_samples, seed)
        return task, train, dev
    train, labels = load_table(config.train_file, config.text_columns, config.label_column,
                               regression=config.regression)
    dev, _ = load_table(config.dev_file, config.text_columns, config.label_column, labels=labels,
                        regression=config.regression)
    train = subsample(train, train_limit, seed)
    dev = subsample(dev, config.max_eval_samples, seed)
    return own_task(config.task, config.text_columns, labels), train, dev


def run_data(config: TrainConfig) -> tuple[TaskSpec, list[Example], list[Example], list[Example] | None]:
    """(task, training rows, rows the run chooses on, dev rows evaluated once at the end or None).

    selection="dev": the run chooses on dev (the last item is None). selection="split": it
    chooses on the task's selection split (see `dynalora.data.selection`), carved out of train.
    """
    task, train, dev = load_data(config)
    if config.selection != "split":
        return task, train, dev, None
    train, chosen_on = split_for_selection(train, task.is_regression)
    return task, subsample(train, config.max_train_samples, SELECTION_SEED), chosen_on, dev


def run_metadata(config: TrainConfig, task: TaskSpec, model_path: str | Path, lr: float) -> dict[str, Any]:
    """Everything `load_trained` / `evaluate` need to rebuild the model and its evaluation."""
    return {
        "base_model": str(model_path), "task": task.name, "labels": list(task.labels) if task.labels else None,
        "text_fields": list(task.text_fields), "num_labels": task.num_labels, "regression": task.is_regression,
        "main_metric": task.main_metric, "pooling": config.pooling, "method": config.method,
        "max_length": config.max_length, "head_dropout": config.head_dropout, "rank": config.rank,
        "alpha": config.alpha, "target_modules": config.target_modules,
        "method_options": config.method_options, "precision": config.precision,
        "eval_batch_size": config.eval_batch_size, "data_dir": config.data_dir,
        "max_eval_samples": config.max_eval_samples, "seed": config.seed, "dev_file": config.dev_file,
        "text_columns": config.text_columns, "label_column": config.label_column, "lr": lr,
        "selection": config.selection, "data_seed": data_seed(config),
        "dynalora_version": __version__,
    }


def train(config: TrainConfig, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Fine-tune, write the run folder (see the module doc), return metrics.json's content.

    `callbacks`: extra step hooks (dynalora.training.hooks), e.g. for logging; any object with
    some of StepHook's methods (say, only `on_step_end(step)`) will do.
    """
    method = get_method(config.method)
    lr = config.lr or method.default_lr
    head_lr = config.head_lr or lr
    run = open_run_folder(config)  # checked first; nothing in it changes before `claim`

    seed_everything(config.seed)
    with skipped_rows_limit(config.max_skipped_share):
        task, train_examples, dev_examples, final_dev = run_data(config)
    model_path = resolve_model(config.model)  # a folder, or a Hub id
    tokenizer = load_tokenizer(model_path)
    config = fit_max_length(config, model_config_of(model_path), model_path)
    train_batches, eval_batches = make_batches(encode(train_examples, tokenizer, config.max_length),
                                               encode(dev_examples, tokenizer, config.max_length), config,
                                               tokenizer.pad_token_id or 0)
    device = pick_device(config.device)
    dtype = pick_dtype(config.precision, device)

    torch.manual_seed(config.seed)  # the head's and adapters' initialisation depend on the seed only
    classifier = build_classifier(model_path, task.num_labels, config.pooling, config.head_dropout,
                                  config.backbone_dropout)
    prepared = method.prepare(classifier, config, total_steps(len(train_batches), config.grad_accum, config.epochs))
    prepared.model.to(device)
    if prepared.cache_features:
        train_batches = CachedFeatures(classifier, train_batches, device, dtype)
        eval_batches = CachedFeatures(classifier, eval_batches, device, dtype)

    # The head is read after `prepare`: a method may wrap it (PEFT's modules_to_save).
    objective = ClassificationObjective(task, classifier.classifier)
    setup = RunSetup(prepared, objective, train_batches, eval_batches, device, dtype, lr, head_lr, RUN_FILE,
                     RUN_FORMAT, run_metadata(config, task, model_path, lr))
    with claim_run(run, config):
        checkpoint = start_run_folder(config, run)
        outcome = run_loop(config, setup, run, checkpoint, callbacks)
        metrics = {"task": task.name, "method": config.method, "split": "dev", **summary(outcome), "head_lr": head_lr}
        if final_dev is not None:  # dev, touched once: the saved (chosen) model, reloaded as a user would
            final = evaluate(config.output, device=str(device))
            metrics.update(n_examples=final["n_examples"], metrics=final["metrics"],
                           selection={"n_examples": metrics["n_examples"], "metrics": metrics["metrics"],
                                      "n_train": len(train_examples)})
        publish_report(config.output, metrics, outcome,
                       title=f"{task.name}: {config.method} on {portable_name(model_path)}")
    return metrics


def model_config_of(model_path: Path) -> Any:
    """The model's transformers config, or None (building the model then says what is wrong)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_path))
    except (OSError, ValueError):
        return None


# -- loading a trained run back ----------------------------------------------------------------
def read_run(folder: str | Path) -> dict[str, Any]:
    """dynalora_run.json of a run folder (its published `best/`) or of a results folder."""
    if not Path(folder).is_dir():
        raise RunFolderError(f"run folder not found: {folder}")
    folder = results_folder(folder)
    if not (folder / RUN_FILE).is_file():
        if (folder / SFT_RUN_FILE).is_file():
            raise RunFolderError(f"{folder}: an instruction-tuning run (`dynalora sft`), not a classifier; "
                                 "`generate`, `inspect`, `merge` and `export` read it")
        if (folder / CONFIG_FILE).is_file():
            raise RunFolderError(f"{folder}: no {RUN_FILE}, so not a run of `dynalora train`; it holds an adapter "
                                 f"({CONFIG_FILE}): load it with DynaLoraModel.from_pretrained(base_model, folder)")
        raise RunFolderError(f"{folder}: no {RUN_FILE}; not a folder written by `dynalora train`")
    document = read_json(folder / RUN_FILE, "trained run description", RunFolderError)
    if not isinstance(document, dict) or document.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{folder / RUN_FILE}: not a dynalora run description")
    return document


def load_trained(adapter_dir: str | Path, base_model: str | Path | None = None,
                 device: str = "cpu") -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, metadata) of a trained run; the model is in eval mode.

    The model maps input_ids / attention_mask / token_type_ids to logits. `base_model`
    overrides the base model folder recorded at training time (e.g. after moving it).
    """
    with reading(adapter_dir) as folder:  # a run publishing meanwhile waits: no mixed read
        metadata = read_run(folder)["metadata"]
        model_path = resolve_model(base_model or metadata["base_model"])
        classifier = build_classifier(model_path, metadata["num_labels"], metadata["pooling"],
                                      metadata["head_dropout"])
        model = get_method(metadata["method"]).load(classifier, folder, metadata)
    model.to(pick_device(device)).eval()
    return model, load_tokenizer(model_path), metadata


def evaluate(adapter_dir: str | Path, task: str | None = None, data_dir: str | Path | None = None,
             split: str = "dev", max_samples: int | None = None, base_model: str | Path | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Metrics of a trained run on a split; with no overrides, exactly metrics.json's numbers."""
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples={max_samples}: must be a positive integer (leave it unset for all)")
    model, tokenizer, meta = load_trained(adapter_dir, base_model, device)
    if task is None and meta.get("dev_file"):
        spec = own_task(meta["task"], meta["text_columns"], tuple(meta["labels"]) if meta["labels"] else None)
        if split != "dev":
            raise DataError(f"run {adapter_dir} was trained on its own files; only split 'dev' ({meta['dev_file']}) exists")
        examples, _ = load_table(meta["dev_file"], meta["text_columns"], meta["label_column"],
                                 labels=meta["labels"], regression=meta["regression"])
        examples = subsample(examples, max_samples or meta["max_eval_samples"], meta.get("data_seed", meta["seed"]))
    else:
        spec = get_task(task or meta["task"])
        if spec.num_labels != meta["num_labels"]:
            raise DataError(f"task {spec.name!r} has {spec.num_labels} label(s), the run was trained "
                            f"with {meta['num_labels']} ({meta['task']})")
        same = spec.name == meta["task"] and split == "dev"
        limit = max_samples or (meta["max_eval_samples"] if same else None)
        examples = load_split(spec, split, data_dir or meta["data_dir"], limit, meta.get("data_seed", meta["seed"]))
    pad = tokenizer.pad_token_id or 0
    batches = BucketBatcher(encode(examples, tokenizer, meta["max_length"]), meta["eval_batch_size"],
                            shuffle=False, pad_token_id=pad)
    dev = next(model.parameters()).device
    logits, labels = predict(model, batches, dev, pick_dtype(meta["precision"], dev))
    return {"task": spec.name, "split": split, "n_examples": len(labels), "metrics": compute_metrics(spec, logits, labels)}
