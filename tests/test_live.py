"""fom live: a driving file played in real time (as a camera delivers frames), animated newest-frame-first,
recorded on the driving clock (fom_cli/commands/live.py, fom_cli/media/live_in.py)."""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, carphone_path, driving_frames, make_clip, run_cli
from fom_cli.media.images import image_size
from fom_cli.media.video_in import probe

MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--precision", "fp32", "--device", "cpu"]
SOURCE = PARITY / "small-source.png"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s at 25 frames/s: the fixture's 8 driving frames, over and over."""
    frames = np.concatenate([driving_frames()] * 7)[:50]
    return make_clip(tmp_path_factory.mktemp("live") / "drive.mp4", frames, fps=25, tone=False)


def live(args, capsys):
    code, out, err = run_cli(["live", SOURCE, *MODEL, "--json", *args], capsys)
    return code, (json.loads(out) if code == 0 else None), err


def test_a_file_paced_in_real_time_is_recorded_with_its_duration_and_statistics(clip, tmp_path, capsys):
    started = time.monotonic()
    code, report, err = live(["--driving", clip, "-o", tmp_path / "rec.mp4"], capsys)
    assert code == 0, err
    # Played at its own frame rate (2 s; ffmpeg before 6.1 may send the first 0.5 s at once), not as fast as it
    # decodes (0.1 s).
    assert time.monotonic() - started >= 1.2
    recording, driving = probe(tmp_path / "rec.mp4"), probe(clip)
    assert abs(recording.num_frames / recording.fps - driving.num_frames / driving.fps) <= 0.2
    assert report["frames_captured"] == 50 and report["driving_fps"] == 25
    assert report["frames_animated"] + report["frames_dropped"] == 50
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"]


def test_a_slow_model_drops_frames_instead_of_queueing_them(clip, tmp_path, capsys, monkeypatch):
    from fom_cli.animation import Animator

    animate = Animator.animate

    def slow(self, frames, kp_driving=None):
        time.sleep(0.12)  # 3 driving frames' time for each frame animated
        return animate(self, frames, kp_driving)

    monkeypatch.setattr(Animator, "animate", slow)
    code, report, err = live(["--driving", clip, "-o", tmp_path / "rec.mp4"], capsys)
    assert code == 0, err
    assert report["frames_dropped"] >= 25 and report["frames_animated"] <= 20
    # Queued frames would wait longer and longer (50 frames x 0.12 s = 6 s by the end); dropped ones never do.
    assert report["latency_p95_ms"] < 400, report
    recording = probe(tmp_path / "rec.mp4")
    assert abs(recording.num_frames / recording.fps - 2.0) <= 0.2  # late frames fill the dropped ones' time
    assert "note: this machine animates" in err


def test_ctrl_c_ends_the_session_with_the_recording_finished(clip, tmp_path, capsys, monkeypatch):
    from fom_cli.animation import Animator

    animate, calls = Animator.animate, []

    def interrupted_at_the_tenth_frame(self, frames, kp_driving=None):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return animate(self, frames, kp_driving)

    monkeypatch.setattr(Animator, "animate", interrupted_at_the_tenth_frame)
    code, report, err = live(["--driving", clip, "-o", tmp_path / "rec.mp4"], capsys)
    assert code == 0, err
    assert report["frames_animated"] == 9 and probe(tmp_path / "rec.mp4").num_frames >= 9


def test_face_follows_the_driving_face_live_and_pastes_back_into_the_photo(tmp_path, capsys):
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    code, out, err = run_cli(["live", photo, "--driving", carphone_path(), "--face", "--checkpoint", SMALL_CHECKPOINT,
                              "--config", SMALL_CONFIG, "--device", "cpu", "-o", tmp_path / "rec.mp4", "--json"],
                             capsys)
    assert code == 0, err
    report, recording, driving = json.loads(out), probe(tmp_path / "rec.mp4"), probe(carphone_path())
    assert recording.size == image_size(photo)  # the whole photo, with the animated face pasted back
    assert abs(recording.num_frames / recording.fps - driving.num_frames / driving.fps) <= 0.2
    assert report["frames_animated"] > 0


def test_the_live_face_window_never_looks_ahead():
    """A face that jumps at frame 5: live, frames 0-4 keep its old place exactly and the window then eases
    toward the new one; a video's smoothing (look-ahead) moves frames 0-4 toward it already."""
    from types import SimpleNamespace

    from fom_cli.face_tracks import DrivingFollower

    boxes = [(0, 0, 100, 100)] * 5 + [(50, 0, 150, 100)] * 10
    boxed = [(index, box) for index, box in enumerate(boxes)]
    reader = SimpleNamespace(fps=25.0)
    live_track = [x for _, (x, _, _) in DrivingFollower(reader, None, 0.1, 64, causal=True).smoothed(boxed)]
    video_track = [x for _, (x, _, _) in DrivingFollower(reader, None, 0.1, 64).smoothed(boxed)]
    assert live_track[:5] == [50.0] * 5 and 50 < live_track[5] < live_track[9] < 100
    assert video_track[4] > 50  # the look-ahead a camera cannot have


def test_every_failure_is_one_line(clip, tmp_path, capsys, monkeypatch):
    def one_line(args, *words):
        code, _, err = run_cli(["live", SOURCE, *MODEL, *args], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("fom: error: "), err
        assert all(word in err for word in words), err

    one_line(["--driving", clip], "needs an output")
    one_line(["--camera", "7", "-o", tmp_path / "rec.mp4"], "no camera at /dev/video7")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # as where the extra is not installed
    one_line(["--driving", clip, "--virtual-camera"], "pip install 'fom[live]'", "v4l2loopback")
    monkeypatch.delenv("DISPLAY", raising=False)
    one_line(["--driving", clip, "--window"], "--window needs a display")
    assert not (tmp_path / "rec.mp4").exists()


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt install xvfb)")
def test_the_window_shows_the_animated_frame_under_a_virtual_display(clip, tmp_path, capsys, monkeypatch):
    import subprocess

    display = ":97"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        monkeypatch.setenv("DISPLAY", display)
        from fom_cli.commands import live as live_command

        shown = []
        original = live_command.Window.show

        def show(self, frame):
            original(self, frame)
            # What the window really displays: its image read back from Tk, not the array we gave it.
            width, height = self._image.width(), self._image.height()
            shown.append(np.array([[self._image.get(x, y) for x in range(0, width, 8)] for y in range(0, height, 8)]))

        monkeypatch.setattr(live_command.Window, "show", show)
        code, report, err = live(["--driving", clip, "--window", "-o", tmp_path / "rec.mp4"], capsys)
        assert code == 0, err
        assert len(shown) == report["frames_animated"] and shown[-1].std() > 5  # a picture, not a blank window
    finally:
        server.kill()
