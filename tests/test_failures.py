"""Failures the user can act on, whatever their origin, are one line and leave every earlier file intact:
a bad --device, a full disk (RLIMIT_FSIZE in a subprocess), a GPU out of memory, a bug (exit 1, with the
trace on FOM_TRACEBACK=1), and a batch job that raises anything at all."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, run_cli
from fom_cli.animation import Animator

REPO = Path(__file__).resolve().parent.parent
SOURCE = PARITY / "small-source.png"
DRIVING_DIR = PARITY / "small-driving"
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fom: error: ") and "Traceback" not in err, err
    return lines[0]


def leftovers(folder):
    return [path.name for path in Path(folder).rglob(".*")]


@pytest.mark.parametrize("device, expected", [("gpu", "unknown device"), ("cuda:99", "cuda:99"),
                                              ("meta", "cpu, cuda or mps")])
def test_a_device_this_machine_lacks_is_one_line_before_anything_loads(tmp_path, capsys, device, expected):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL, "--device", device],
                           capsys)
    assert code == 2 and expected in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def fom_with_file_size_limit(args, limit, cwd):
    """`fom ARGS` in a subprocess that may write no file larger than `limit` bytes: what a full disk does
    to a writer, short of filling one. SIGXFSZ is ignored, so writes fail with EFBIG instead of killing."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "fom_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environment, preexec_fn=limit_file_size, timeout=300)


@pytest.mark.parametrize("command", ["export", "animate"])
def test_a_full_disk_is_one_line_and_the_previous_output_stays(tmp_path, command):
    output = tmp_path / ("slim.pth" if command == "export" else "out.mp4")
    output.write_bytes(b"the previous output")
    if command == "export":
        args = ["export", SMALL_CHECKPOINT, "-o", output, "--config", SMALL_CONFIG]
        limit = 200_000  # the slim checkpoint is 0.9 MiB
    else:
        args = ["animate", SOURCE, DRIVING_DIR, "-o", output, *MODEL]
        limit = 2_000  # a few frames of H.264
    result = fom_with_file_size_limit(args, limit, tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "too large" in line.lower() or "disk" in line
    assert output.read_bytes() == b"the previous output"
    assert sorted(path.name for path in tmp_path.iterdir()) == [output.name]


def drop_permission_override():
    """For preexec_fn: root ignores file permissions, so take that power (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH) out of the capabilities the next program gets; a read-only folder is then
    read-only to it too. A no-op for other users."""
    import ctypes

    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.parametrize("command", ["export", "synth", "crop", "animate"])
def test_a_folder_without_write_permission_is_one_line(tmp_path, command):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    args = {"export": ["export", SMALL_CHECKPOINT, "-o", read_only / "slim.pth", "--config", SMALL_CONFIG],
            "synth": ["synth", "--out", read_only / "faces", "--videos", 2, "--test-videos", 1, "--frames", 4,
                      "--size", 64, "--quiet"],
            "crop": ["crop", SOURCE, "-o", read_only / "crops"],
            "animate": ["animate", SOURCE, DRIVING_DIR, "-o", read_only / "out.mp4", *MODEL]}[command]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        result = subprocess.run([sys.executable, "-m", "fom_cli", *map(str, args)], capture_output=True, text=True,
                                env=environment, preexec_fn=drop_permission_override, timeout=300)
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's permission override here ({error})")
    finally:
        read_only.chmod(0o755)
    assert result.returncode == 2
    assert "ermission denied" in one_error_line(result.stderr)
    assert list(read_only.iterdir()) == []


def test_an_unexpected_error_is_one_line_with_exit_1_and_the_trace_on_request(tmp_path, capsys, monkeypatch):
    def broken(self, frames, kp_driving=None):
        raise ValueError("something nobody foresaw\nsecond line")
    monkeypatch.setattr(Animator, "animate", broken)
    args = ["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 1 and "unexpected ValueError: something nobody foresaw" in line and "FOM_TRACEBACK=1" in line
    monkeypatch.setenv("FOM_TRACEBACK", "1")
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "Traceback" in err and 'raise ValueError("something nobody foresaw' in err
    assert err.strip().splitlines()[-1] == line
    assert list(tmp_path.iterdir()) == []


def test_gpu_out_of_memory_names_a_batch_size_to_try(tmp_path, capsys, monkeypatch):
    def out_of_memory(self, frames, kp_driving=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(Animator, "animate", out_of_memory)
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL, "--batch-size", "8"],
                           capsys)
    assert code == 2 and "--batch-size 4" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_survives_any_exception_in_one_job(tmp_path, capsys, monkeypatch):
    from fom_cli.commands import batch

    calls = []

    def fails_in_the_second_job(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return animate_file(*args, **kwargs)
    animate_file = batch.animate_file
    monkeypatch.setattr(batch, "animate_file", fails_in_the_second_job)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("source,driving,output\n" + "".join(f"{SOURCE},{DRIVING_DIR},out{i}.mp4\n" for i in range(3)))
    code, out, err = run_cli(["batch", jobs, *MODEL, "--json"], capsys)
    assert code == 1
    *job_lines, summary = [json.loads(line) for line in out.splitlines()]
    assert [line["status"] for line in job_lines] == ["done", "failed", "done"]
    assert summary["summary"] and (summary["done"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    errors = err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("fom: error: job 2") and "illegal memory access" in errors[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jobs.csv", "out0.mp4", "out2.mp4"]
