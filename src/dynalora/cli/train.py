"""`dynalora train`: fine-tune a classifier; its flags are the fields of `TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import yaml

from dynalora.cli.common import print_json
from dynalora.training.config import TrainConfig

HELP = "fine-tune on a GLUE task or your own data"  # its line in `dynalora --help`


def none_or(kind: type) -> Any:
    """A converter accepting `none` (unset) as well as a `kind` value."""

    def convert(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        return kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.replace("-", "_"), value


def shown(default: Any) -> str:
    """A default as a user would type it (None is "unset", not Python's None)."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, dict)) and not default:
        return "none"
    return str(default)


def method_options_help() -> str:
    """Which KEY=VALUE options each method takes (from the adapter config classes)."""
    from dynalora.adapters.config import CONFIG_CLASSES, method_option_names

    lora = method_option_names(CONFIG_CLASSES["lora"])
    parts = [f"lora: {', '.join(lora)}"]
    for name in ("dynamic", "rank1"):
        if name in CONFIG_CLASSES:
            extra = [o for o in method_option_names(CONFIG_CLASSES[name]) if o not in lora]
            parts.append(f"{name}: lora's and {', '.join(extra)}")
    parts += ["adapter: bottleneck, train_layer_norm", "peft-lora / peft-adalora: fields of PEFT's LoraConfig / "
              "AdaLoraConfig", "full, head, bitfit: none"]
    return "; ".join(parts)


def flags_of(name: str) -> list[str]:
    """`--max-length` for field max_length, then its aliases (run_config.ALIASES) as written in
    transformers' scripts (`--learning_rate`) and with hyphens (`--learning-rate`)."""
    from dynalora.training.run_config import ALIASES

    flags = ["--" + name.replace("_", "-")]
    for alias in (a for a, field_name in ALIASES.items() if field_name == name):
        flags += [f for f in ("--" + alias, "--" + alias.replace("_", "-")) if f not in flags]
    return flags


def add_field(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    flags = flags_of(f.name)
    kind = str(f.type)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    help_text = f.metadata.get("help", "")
    if f.name == "method_options":
        help_text += f". Options by method: {method_options_help()}"
    if "default:" not in help_text:  # some helps say it in words ("default: the packaged MiniLM")
        help_text += f" (default: {shown(default)})"
    options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    if kind in ("bool", "bool | None"):  # unset stays None: the flag given or not, never a default value
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **options)
    elif kind.startswith("list"):
        # a repeated flag adds to the list (`--stop A --stop B` is `--stop A B`), as `generate` does
        parser.add_argument(*flags, nargs="+", action="extend", metavar=f.metadata.get("metavar", "NAME"), **options)
    elif kind.startswith("dict"):
        parser.add_argument(*flags, nargs="+", action="extend", type=key_value, metavar="KEY=VALUE", **options)
    else:
        base = {"int": int, "float": float, "str": str}[kind.split(" | ")[0]]
        converter = none_or(base) if "None" in kind else base
        choices = f.metadata.get("choices")
        if choices:  # argparse lists them in the usage line and refuses anything else
            parser.add_argument(*flags, type=converter, choices=list(choices), **options)
        else:
            parser.add_argument(*flags, type=converter, metavar=base.__name__.upper(), **options)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help=HELP,
        description="Fine-tune a sequence classifier (default: the packaged MiniLM) with one of the "
                    "methods; writes the adapter, metrics.json, log.jsonl, curves.png and checkpoints "
                    "into --output, and prints the final metrics as JSON. --min-epochs applies to every "
                    "method (no best model and no early stop before it); dynamic, rank1 and peft-adalora "
                    "also schedule their rank allocation or pruning to end by then.")
    add_config_flags(parser, TrainConfig)
    parser.set_defaults(func=run)


def add_config_flags(parser: argparse.ArgumentParser, config_class: Any) -> None:
    """`--config FILE.yaml` plus one flag per field of the run-config dataclass (read back by
    `config_from_args`)."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML mapping of any of the fields below; flags given here override it")
    for f in dataclasses.fields(config_class):
        add_field(parser, f)


def config_from_args(args: argparse.Namespace, config_class: Any = TrainConfig) -> Any:
    """The run config from the flags, on top of the --config YAML when given (`config_class`:
    a RunConfig such as TrainConfig or SftConfig)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "method_options" in given:  # KEY=VALUE pairs from the command line
        given["method_options"] = dict(given["method_options"])
    if args.config:
        return config_class.from_yaml(args.config, **given)
    return config_class.from_dict(given, source="command line")


def run(args: argparse.Namespace) -> int:
    from dynalora.training import train

    metrics = train(config_from_args(args))
    print_json(metrics)
    return 0
