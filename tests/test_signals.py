"""SIGTERM and Ctrl-C (SIGINT) stop `fom animate` mid-write with nothing left behind: no output, no
hidden temporary, no folder fom created, and no process still running."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, driving_frames, make_clip

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def long_driving(tmp_path_factory):
    """A driving video long enough that the tiny model is still writing when the signal comes."""
    folder = tmp_path_factory.mktemp("long")
    return make_clip(folder / "long.mp4", np.concatenate([driving_frames()] * 100), fps=25, tone=True)


# A video and a frames folder, each with one of the two signals: each run pays for starting torch.
@pytest.mark.parametrize("signal_number, exit_code, output", [(signal.SIGTERM, 143, "out/clip.mp4"),
                                                              (signal.SIGINT, 130, "out/frames/")])
def test_a_signal_mid_write_leaves_nothing_behind(tmp_path, long_driving, signal_number, exit_code, output):
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "fom_cli", "animate", PARITY / "small-source.png", long_driving,
                                "-o", tmp_path / output, "--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG,
                                "--quiet"], stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob(".*.tmp-*")):  # the output is being written
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(0.05)
        process.send_signal(signal_number)
        _, err = process.communicate(timeout=30)  # a hang, not a speed limit
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [], "the output, a temporary or a folder fom made was left behind"
