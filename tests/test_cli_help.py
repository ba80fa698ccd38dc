"""`dynalora --help` answers at once (no torch), and every command's help states one default per flag."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import pytest

from dynalora.cli.main import COMMANDS, build_parser


def test_top_level_help_loads_neither_torch_nor_transformers() -> None:
    code = ("import sys, contextlib, io\n"
            "from dynalora.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'matplotlib') if m in sys.modules)\n"
            "print(heavy, 'predict' in out.getvalue())\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.stdout.strip() == "[] True", result.stdout + result.stderr
    # CPU seconds, not wall-clock: the shared test machine may be loaded (measured: ~0.5 s alone)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 2.0, f"dynalora --help took {cpu:.1f} s of CPU"


def command_parser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", [m.rpartition(".")[2] for m in COMMANDS])
def test_every_flag_states_at_most_one_default_and_never_a_python_none(command: str) -> None:
    for action in command_parser(command)._actions:
        text = action.help or ""
        assert text.count("default:") <= 1, f"{command} {action.option_strings}: {text}"
        assert "default: None" not in text and "(default: [])" not in text, f"{command} {action.option_strings}"


def test_train_help_lists_every_method_and_the_options_of_each() -> None:
    actions = {a.dest: a for a in command_parser("train")._actions}
    for method in ("lora", "dynamic", "rank1", "full", "head", "adapter", "bitfit", "peft-lora", "peft-adalora"):
        assert method in actions["method"].help
    options = actions["method_options"].help
    assert "use_rslora" in options and "t_warmup" in options and "prune_every" in options and "bottleneck" in options
    assert actions["pooling"].choices == ["mean", "cls", "pooler"]
