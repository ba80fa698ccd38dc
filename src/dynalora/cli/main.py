"""`dynalora` command line: one subcommand per module, each calling one public function.

A command module defines `HELP` (its line in `dynalora --help`) and `add_parser(subparsers)`,
which adds its parser and sets `func=<callable taking the parsed args, returning an exit
code>`. Adding a command is one line in COMMANDS. Only the command being run builds its full
parser (the others are listed by name and HELP), and command modules import torch and
transformers only inside their functions, so `dynalora --help` answers at once. Errors a user can fix (bad flags or values, missing or broken files) are printed
as one line and exit with status 2, and so are operating-system errors a user can fix (no
space, read-only, permission denied, a file where a folder belongs); a diverged training run
exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

COMMANDS = [
    "dynalora.cli.train",
    "dynalora.cli.eval",
    "dynalora.cli.predict",
    "dynalora.cli.merge",
    "dynalora.cli.export",
    "dynalora.cli.inspect",
    "dynalora.cli.sft",
    "dynalora.cli.generate",
    "dynalora.cli.bench",
    "dynalora.cli.analyze",
]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> Parser:
    """The whole parser, or with `command` given, that command's in full and the others as names."""
    from dynalora import __version__

    parser = Parser(prog="dynalora", description="LoRA, dynamic LoRA and Rank-1 Sum LoRA fine-tuning.")
    parser.add_argument("--version", action="version", version=f"dynalora {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(name)
        if command is None or name.rpartition(".")[2] == command:
            module.add_parser(subparsers)
        else:
            subparsers.add_parser(name.rpartition(".")[2], help=module.HELP)
    return parser


def chosen_command(argv: Sequence[str]) -> str:
    """The command named in `argv` (its first word that is not an option), or "" for none."""
    return next((a for a in argv if not a.startswith("-")), "")


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: every dynalora.errors kind, and files that are not there."""
    from dynalora.errors import DynaLoraError

    return (DynaLoraError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    from dynalora.quiet import one_line_warning
    from dynalora.training import TrainingDiverged

    # A user reads the warning, not our source line; restored after, for in-process callers.
    formatwarning, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        with warnings.catch_warnings():  # put back afterwards (a caller, e.g. pytest, may record them)
            warnings.showwarning = show_on_stderr
            return int(args.func(args) or 0)
    except user_errors() as err:
        print(f"dynalora {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"dynalora {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dynalora {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # no space, read-only, permission denied, file/folder in the way
        from dynalora.cli.os_errors import describe_os_error

        message = describe_os_error(err)
        if message is None:
            raise
        print(f"dynalora {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def show_on_stderr(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: object = None, line: str | None = None) -> None:
    """Warnings go to the user's stderr, one line each (warnings.formatwarning is ours)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
