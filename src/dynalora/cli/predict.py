"""`dynalora predict`: a trained run's predictions for a file of new text (metrics if labelled)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dynalora.cli.common import add_adapter_arg, print_json

HELP = "predict labels for a file of new text"  # its line in `dynalora --help`


def add_file_args(parser: argparse.ArgumentParser, flag: str, required: bool = False) -> None:
    """The table to score and its columns (shared with `eval --dev-file`)."""
    parser.add_argument(flag, metavar="FILE", required=required,
                        help="a .csv, .tsv or .jsonl table of texts, with or without labels")
    parser.add_argument("--text-columns", nargs="+", metavar="NAME",
                        help="text column(s) of the file (default: the ones the run was trained with; "
                             "for a GLUE run the task's field names, e.g. sentence1 sentence2)")
    parser.add_argument("--label-column", metavar="NAME",
                        help="label column; metrics are computed when the file has it (default: the "
                             "run's label column, else 'label')")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict", help=HELP,
        description="Score every row of a CSV/TSV/JSONL file with a trained run: the predicted label "
                    "and each label's probability (regression: the score). With --output the rows go "
                    "to that file (.jsonl, .csv or .tsv, one line per input row) and a JSON summary "
                    "to stdout; without it, one JSON line per row to stdout. When the file has the "
                    "label column, the task's metrics are computed as `dynalora eval` computes them.")
    add_adapter_arg(parser)
    add_file_args(parser, "--file", required=True)
    parser.add_argument("--output", metavar="FILE", help="where to write the predictions (.jsonl, .csv, .tsv)")
    parser.add_argument("--model", metavar="PATH", help="base model folder, if it moved since training")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the model (auto: a GPU if there is one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynalora.data import DataError
    from dynalora.training.prediction import OUTPUT_SUFFIXES, score_file, write_predictions

    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):  # before the model loads
        raise DataError(f"--output {args.output}: use a .jsonl, .csv or .tsv file name")
    result = score_file(args.adapter, args.file, args.text_columns, args.label_column, args.model, args.device)
    rows = result.pop("predictions")
    if args.output:
        result["output"] = str(write_predictions(rows, args.output))
        print_json(result)
        return 0
    sys.stdout.writelines(json.dumps(row) + "\n" for row in rows)
    if "metrics" in result:
        print(json.dumps({"metrics": result["metrics"], "n_examples": result["n_examples"]}), file=sys.stderr)
    return 0
