"""Driving the `dynalora` command line as a user would, with hostile input.

`cli(...)` runs `main(argv)` in this process and captures what a terminal would show;
`cli_process(...)` runs the real command in a fresh interpreter (C++ libraries print to the
real stderr, exit codes are the process's own). `assert_refused` is the contract every
hostile case is held to: a non-zero exit, exactly one line on stderr naming the problem, no
traceback. `digest(folder)` fingerprints a folder (names, modes, bytes) so a case can show
that a refused command changed nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from training_helpers import make_sst_dir, make_tiny_model

from dynalora.cli.main import main
from dynalora.runs.lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(*argv: object) -> Result:
    """`dynalora ARGV` in-process: exit status (argparse's exits included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def process_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("DYNALORA_FAULT_AT", None)
    return env


def process_argv(*argv: object, prefix: tuple[str, ...] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "dynalora.cli.main", *map(str, argv)]


def cli_process(*argv: object, prefix: tuple[str, ...] = (), timeout: float = 240, **env: str) -> Result:
    """The real `dynalora ARGV` in a fresh interpreter (`prefix`: e.g. setpriv ... to change user)."""
    done = subprocess.run(process_argv(*argv, prefix=prefix), capture_output=True, text=True,
                          env=process_env(**env), timeout=timeout, cwd=REPO)
    return Result(done.returncode, done.stdout, done.stderr)


def assert_refused(result: Result, *needles: str) -> str:
    """Non-zero exit, one stderr line holding every needle, no traceback; returns the line."""
    assert result.code not in (0, None), f"accepted: {result}"
    assert "Traceback" not in result.err, result.err
    assert len(result.err_lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    line = result.err_lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def digest(folder: Path) -> str | None:
    """Names, modes and bytes of everything under `folder` (None if it does not exist). The
    lock file is left out: taking the lock is the one thing every run does to the folder."""
    if not folder.exists():
        return None
    hasher = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.name == LOCK_FILE:
            continue
        relative = path.relative_to(folder).as_posix()
        hasher.update(f"{relative}\0{path.stat().st_mode:o}\0".encode())
        if path.is_file():
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def litter(folder: Path) -> list[str]:
    """Temporary names a save leaves when it is cut short."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name.endswith(".tmp"))


def world_readable_copy(source: Path, root: Path) -> Path:
    """A copy of `source` that any user can read (pytest's temporary folders are private)."""
    target = root / source.name
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def tiny_inputs(root: Path) -> tuple[Path, Path]:
    """(model folder, GLUE-style data folder) of the tiny task, under `root`."""
    return make_tiny_model(root / "model"), make_sst_dir(root / "glue")


def train_argv(model: Path, data: Path, output: Path, *extra: object) -> list[object]:
    """A run of about a second: 96 examples, batch 16, 2 epochs, evaluated and saved every 3 steps."""
    return ["train", "--task", "sst2", "--model", model, "--data-dir", data, "--output", output,
            "--batch-size", "16", "--epochs", "2", "--eval-every", "3", "--lr", "0.01", "--head-lr", "0.1",
            "--head-dropout", "0", "--max-length", "64", "--no-progress", *extra]


# -- shared fixtures (imported by the test_hostile_* modules): the tiny inputs and one finished
# run are built once per session; every case that must leave a run unchanged copies it.
@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_inputs(tmp_path_factory.mktemp("hostile_inputs"))


@pytest.fixture(scope="session")
def finished(inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run's folder (copied by each case that must leave it unchanged)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = cli(*train_argv(*inputs, out))
    assert result.code == 0, result.err
    return out


@pytest.fixture
def victim(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target
