"""Operating-system errors through the CLI: read-only, no space, permission denied, files and
folders where the other belongs; two runs on one folder; a real `kill -9` and resume.

CI runs as root, which ignores permission bits: read-only and full file systems are real
mounts here (a read-only bind mount, a tiny tmpfs), and "permission denied" runs the command
as an unprivileged user (setpriv). A case that cannot set its condition up is skipped, saying
why. The real-process cases start together (one fixture) so their interpreter start-ups
overlap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hostile_helpers import (  # noqa: F401  (shared fixtures)
    Result,
    assert_refused,
    cli,
    digest,
    finished,
    inputs,
    litter,
    process_argv,
    process_env,
    tiny_inputs,
    train_argv,
    world_readable_copy,
)
from training_helpers import assert_same_tensors, saved_tensors, without_wall_time

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")


def run_quietly(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0




@pytest.fixture(scope="module")
def public(inputs, finished, tmp_path_factory) -> dict[str, Path]:
    """World-readable copies of the model, data and finished run (for another user)."""
    root = Path(tempfile.mkdtemp(prefix="dynalora-hostile-"))
    root.chmod(0o755)
    copies = {"model": world_readable_copy(inputs[0], root), "glue": world_readable_copy(inputs[1], root),
              "run": world_readable_copy(finished, root), "root": root}
    yield copies
    shutil.rmtree(root, ignore_errors=True)


def mounted(kind: str, target: Path, size_kb: int = 0) -> bool:
    """Mount a tmpfs of `size_kb` (kind "tmpfs") or make `target` a read-only bind of itself."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    if kind == "tmpfs":
        return run_quietly("mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(target))
    return run_quietly("mount", "--bind", str(target), str(target)) and (
        run_quietly("mount", "-o", "remount,ro,bind", str(target)) or not run_quietly("umount", str(target)))


@pytest.fixture
def mounts():
    done: list[Path] = []
    yield done
    for target in reversed(done):
        run_quietly("umount", "-l", str(target))


# -- real processes, started together ---------------------------------------------------------------
@pytest.fixture(scope="module")
def processes(inputs, finished, public, tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Every real-process case, launched at once; each test waits for its own."""
    root = tmp_path_factory.mktemp("processes")
    model, data = inputs
    cases: dict[str, tuple[list[str], tuple[str, ...], Path]] = {}

    def add(name: str, argv: list[object], prefix: tuple[str, ...] = (), folder: Path | None = None) -> None:
        cases[name] = (process_argv(*argv, prefix=prefix), prefix, folder or root)

    blocker = root / "a-file"
    blocker.write_text("not a folder\n")
    add("output is a file", train_argv(model, data, blocker))
    add("bad sampling value", ["generate", "--no-adapter", "--model", root / "none", "--prompt", "x",
                               "--temperature", "-1"])
    long_run = root / "long"
    add("long run", train_argv(model, data, long_run, "--epochs", str(LONG_EPOCHS)), folder=long_run)
    if os.geteuid() == 0 and shutil.which("setpriv"):
        add("permission denied (train)", train_argv(public["model"], public["glue"], public["run"], "--overwrite"),
            NOBODY, public["run"])
        (public["run"] / "best").chmod(0o700)
        add("permission denied (eval)", ["eval", "--adapter", public["run"]], NOBODY, public["run"])
    home = public["root"] / "home"
    home.mkdir(mode=0o777, exist_ok=True)
    home.chmod(0o777)
    started = {}
    for name, (argv, _, folder) in cases.items():
        started[name] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=process_env(HOME=str(home), HF_HOME=str(home / "hf")),
                                          cwd=public["root"]), folder)
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


LONG_EPOCHS = 2


def wait_for(condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_a_busy_folder_refuses_a_second_run_and_a_killed_run_resumes(processes, inputs, tmp_path) -> None:
    """Run A (a real process) holds its folder: run B, even with --overwrite, is refused naming
    A. Then A is killed (-9) after a checkpoint: its published model stays whole, the lock died
    with it, and --resume finishes A with the metrics and adapter of a run never interrupted.
    (A is paused while B tries, so the test does not depend on how fast A trains.)"""
    proc, folder = processes["long run"]
    wait_for(lambda: proc.poll() is not None or (folder / "checkpoints" / "latest.json").is_file())
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "run A ended before run B could try"
    second = cli(*train_argv(*inputs, folder, "--overwrite"))
    assert_refused(second, str(folder), "in use by another run", f"pid {proc.pid}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    published = json.loads((folder / "best" / "dynalora_run.json").read_text())["best"]
    evaluated = cli("eval", "--adapter", folder)
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["metrics"] == published["metrics"]  # adapter and run file agree
    resumed = cli(*train_argv(*inputs, folder, "--epochs", str(LONG_EPOCHS), "--resume"))
    assert resumed.code == 0, resumed.err
    reference = cli(*train_argv(*inputs, tmp_path / "reference", "--epochs", str(LONG_EPOCHS)))
    assert reference.code == 0, reference.err
    assert without_wall_time(json.loads(resumed.out)) == without_wall_time(json.loads(reference.out))
    assert_same_tensors(saved_tensors(folder), saved_tensors(tmp_path / "reference"))
    assert not litter(folder)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_real_process_output_is_a_file(processes) -> None:
    code, out, err = finish(processes["output is a file"][0])
    assert_refused(Result(code, out, err), "a-file", "file")


def test_real_process_bad_sampling_value(processes) -> None:
    code, out, err = finish(processes["bad sampling value"][0])
    assert_refused(Result(code, out, err), "temperature=-1")


def test_real_process_permission_denied(processes, public) -> None:
    if "permission denied (train)" not in processes:
        pytest.skip("needs root and setpriv to run a command as another user")
    code, out, err = finish(processes["permission denied (train)"][0])
    assert_refused(Result(code, out, err), str(public["run"]), "permission denied")
    code, out, err = finish(processes["permission denied (eval)"][0])
    assert_refused(Result(code, out, err), str(public["run"] / "best"), "permission denied")


# -- mounts ------------------------------------------------------------------------------------------
def test_a_read_only_run_folder(inputs, finished, tmp_path, mounts) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if not mounted("ro", run):
        pytest.skip("cannot make a read-only mount here (needs root)")
    mounts.append(run)
    before = digest(run)
    assert_refused(cli(*train_argv(*inputs, run, "--overwrite")), str(run), "read-only file system")
    assert_refused(cli(*train_argv(*inputs, run, "--resume")), str(run), "read-only file system")
    assert_refused(cli("merge", "--adapter", run, "--output", run / "merged"), str(run), "read-only")
    assert digest(run) == before
    evaluated = cli("eval", "--adapter", run)  # reading needs no write access
    assert evaluated.code == 0, evaluated.err


def test_no_space_left(inputs, finished, tmp_path, mounts) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mounted("tmpfs", disk, size_kb=96):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    mounts.append(disk)
    # A merge that cannot fit leaves nothing behind.
    line = assert_refused(cli("merge", "--adapter", finished, "--output", disk / "merged"), "no space left")
    assert str(disk) in line
    assert not (disk / "merged").exists() and not litter(disk)
    # A run that fills the disk mid-way stops with one line (after its progress lines); what
    # it published is whole, and no temporary file is left.
    run = disk / "run"
    result = cli(*train_argv(*inputs, run))
    assert result.code == 2 and "Traceback" not in result.err, result.err
    line = result.err_lines[-1]
    assert "no space left" in line and str(run) in line and not litter(run)
    assert all(earlier.startswith("step ") for earlier in result.err_lines[:-1]), result.err
    if (run / "best").is_dir():
        evaluated = cli("eval", "--adapter", run)
        assert evaluated.code == 0, evaluated.err


def test_files_and_folders_in_each_others_place(inputs, finished, tmp_path) -> None:
    model, _ = inputs
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_refused(cli(*train_argv(model, a_file, tmp_path / "run")), str(a_file))
    assert_refused(cli("eval", "--adapter", a_file), str(a_file))
    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    (run / "metrics.json").mkdir()  # a folder where the run writes a file
    before = digest(run)
    assert_refused(cli(*train_argv(*inputs, run, "--resume")), str(run / "metrics.json"), "folder")
    assert digest(run) == before


if sys.platform != "linux":  # flock, mounts and setpriv as used here are Linux's
    pytest.skip("Linux only", allow_module_level=True)
