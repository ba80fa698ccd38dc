"""A kill at every file write and rename of a save, in turn, then `--resume` and `eval`.

Deterministic fault injection, not timing: `DYNALORA_FAULT_AT=N` makes the process die
(`os._exit`, no cleanup, as `kill -9` leaves things) at its N-th write or rename point (see
`dynalora.files.fault_point`). A reference run lists every point with `DYNALORA_FAULT_LOG`;
each point of the second publication of the best model (and, marked slow, of the second
checkpoint) is then killed in a forked copy of this process (cheap: nothing to import again).
After each kill the published model must agree with its run description, and `--resume` must
finish the run exactly as the uninterrupted one did, with no temporary litter left anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile_helpers import cli, litter, tiny_inputs, train_argv
from training_helpers import assert_same_tensors, saved_tensors, without_wall_time

from dynalora.files import FAULT_AT_ENV, FAULT_EXIT, FAULT_LOG_ENV, reset_fault_points


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_inputs(tmp_path_factory.mktemp("hostile_faults"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple[int, str]]]:
    """The uninterrupted run, its metrics, and every fault point it passed (number, label)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    log = out.parent / "points.tsv"
    os.environ[FAULT_LOG_ENV] = str(log)
    reset_fault_points()
    try:
        result = cli(*train_argv(*inputs, out))
    finally:
        del os.environ[FAULT_LOG_ENV]
    assert result.code == 0, result.err
    points = [(int(n), label.replace(str(out), "RUN")) for n, label in
              (line.split("\t", 1) for line in log.read_text().splitlines())]
    return out, json.loads(result.out), points


def groups(points: list[tuple[int, str]], belongs) -> list[list[tuple[int, str]]]:
    """Runs of consecutive points for which `belongs(label)` holds."""
    found: list[list[tuple[int, str]]] = []
    previous = None
    for number, label in points:
        if belongs(label):
            if previous != number - 1:
                found.append([])
            found[-1].append((number, label))
            previous = number
    return found


def publication(label: str) -> bool:
    return "/.best-new." in label or label.endswith("RUN/best")


def checkpoint(label: str) -> bool:
    return "RUN/checkpoints/" in label


def run_killed_at(number: int, argv: list[object]) -> int:
    """Run `dynalora ARGV` in a forked child that dies at fault point `number`; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ[FAULT_AT_ENV] = str(number)
            reset_fault_points()
            status = cli(*argv).code
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def test_the_reference_run_passes_publication_and_checkpoint_points(reference) -> None:
    _, _, points = reference
    published = groups(points, publication)
    assert len(published) >= 2 and len(groups(points, checkpoint)) >= 2
    labels = [label.split(" ", 1)[0] for _, label in published[1]]
    assert {"write", "rename", "swap"} <= set(labels)  # files written, renamed, then the folder swapped


def test_a_kill_at_every_write_and_rename_of_a_publication(inputs, reference, tmp_path) -> None:
    kill_resume_and_compare(inputs, reference, tmp_path, groups(reference[2], publication)[1])


@pytest.mark.slow
def test_a_kill_at_every_write_and_rename_of_a_checkpoint(inputs, reference, tmp_path) -> None:
    kill_resume_and_compare(inputs, reference, tmp_path, groups(reference[2], checkpoint)[1])


def kill_resume_and_compare(inputs, reference, tmp_path: Path, chosen: list[tuple[int, str]]) -> None:
    ref_dir, ref_metrics, _ = reference
    for number, label in chosen:
        out = tmp_path / f"killed-at-{number}"
        argv = train_argv(*inputs, out)
        assert run_killed_at(number, argv) == FAULT_EXIT, f"the run did not reach point {number} ({label})"
        if (out / "best").is_dir():  # what a reader sees right after the kill is whole
            run_file = json.loads((out / "best" / "dynalora_run.json").read_text())
            evaluated = cli("eval", "--adapter", out)
            assert evaluated.code == 0, (label, evaluated.err)
            assert json.loads(evaluated.out)["metrics"] == run_file["best"]["metrics"], label
        again = "--resume" if (out / "checkpoints" / "latest.json").is_file() else "--overwrite"
        resumed = cli(*argv, again)
        assert resumed.code == 0, (label, resumed.err)
        assert without_wall_time(json.loads(resumed.out)) == without_wall_time(ref_metrics), label
        assert_same_tensors(saved_tensors(out), saved_tensors(ref_dir))
        assert json.loads(cli("eval", "--adapter", out).out)["metrics"] == ref_metrics["metrics"], label
        assert not litter(out), (label, litter(out))
        assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-00000012"], label
