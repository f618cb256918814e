"""Progress: a bar on a terminal, plain lines in logs and pipes (no carriage returns, no cursor codes)."""

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from tqdm import tqdm

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG
from fom_cli.progress import PlainProgress, progress_bar

ANIMATE = [sys.executable, "-m", "fom_cli", "animate", PARITY / "small-source.png", PARITY / "small-driving",
           "--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "-o"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_tqdms_bar_and_anything_else_plain_lines():
    terminal, log = Terminal(), io.StringIO()
    with progress_bar(total=3, desc="out.mp4", unit="frame", file=terminal) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    with progress_bar(total=3, desc="out.mp4", unit="frame", file=log) as lines:
        assert isinstance(lines, PlainProgress)
        lines.update(3)
    assert "\r" in terminal.getvalue()
    assert re.fullmatch(r"out\.mp4: 3/3 frame \(100%\), [\d.]+ frame/s, 00:00 elapsed\n", log.getvalue())


def test_plain_lines_come_every_interval_and_at_the_end():
    log = io.StringIO()
    # interval 0: a line at every update (the time between lines is what the interval sets, not their form).
    for _ in PlainProgress(range(2), desc="reconstruct", unit="video", file=log, interval=0):
        pass
    with PlainProgress(total=2 ** 21, desc="downloading vox", unit="B", unit_scale=True, unit_divisor=1024,
                       file=log, interval=3600) as download:
        download.update(2 ** 20)  # within the interval: no line yet
        download.set_postfix({"loss": "0.125"})
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["reconstruct: 1/2 video (50%)", "reconstruct: 2/2 video (100%)",
                                                     "reconstruct: 2/2 video (100%)",
                                                     "downloading vox: 1.00M/2.00MB (50%)"]
    assert lines[-1].endswith("elapsed, loss=0.125")
    quiet = io.StringIO()
    with PlainProgress(total=1, file=quiet, disable=True, interval=0) as nothing:
        nothing.update()
    assert quiet.getvalue() == ""


def test_animate_writes_plain_lines_to_a_pipe_and_a_bar_to_a_terminal(tmp_path):
    piped = subprocess.run([*ANIMATE, tmp_path / "piped.gif"], capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "\x1b[" not in piped.stderr
    assert re.search(r"^piped\.gif: 8/8 frame \(100%\), .* elapsed$", piped.stderr, re.MULTILINE), piped.stderr

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new one is 0 columns wide
    with subprocess.Popen([*ANIMATE, tmp_path / "terminal.gif"], stderr=terminal, stdout=subprocess.DEVNULL) as run:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's last writer has gone
                break
            if not chunk:
                break
            shown += chunk
    os.close(controller)
    assert run.returncode == 0, shown
    assert b"\rterminal.gif: 100%" in shown
