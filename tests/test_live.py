"""fom live: a driving file played in real time (as a camera delivers frames), animated newest-frame-first,
recorded on the driving clock (fom_cli/commands/live.py, fom_cli/media/live_in.py)."""

import glob
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, carphone_path, driving_frames, make_clip, run_cli
from fom_cli.media.images import image_size
from fom_cli.media.marks import DIGITAL_SOURCE_TYPE, read_label
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
    assert read_label(tmp_path / "rec.mp4")["digital_source_type"] == DIGITAL_SOURCE_TYPE   # marked as synthetic
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


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="this machine has video devices: a loopback one would work")
def test_a_virtual_camera_without_a_device_is_one_line_saying_what_to_install(clip, tmp_path, capsys):
    pytest.importorskip("pyvirtualcam", reason="pyvirtualcam (the test extra) is not installed")
    code, _, err = run_cli(["live", SOURCE, *MODEL, "--driving", clip, "--virtual-camera", "-o", tmp_path / "rec.mp4"],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("fom: error: "), err
    assert "no virtual camera device" in err and "modprobe v4l2loopback" in err and "OBS" in err
    assert not (tmp_path / "rec.mp4").exists()


def read_xwd(data):
    """An X window dump (xwd's format: a header of 25 big-endian 32-bit fields, the window's name, a colour
    map, then rows of pixels) as uint8 (H, W, 3), for the 24-bit TrueColor screens Xvfb makes."""
    header = np.frombuffer(data[:100], dtype=">u4")
    header_size, width, height, byte_order = int(header[0]), int(header[4]), int(header[5]), int(header[7])
    bits_per_pixel, bytes_per_line, colours = int(header[11]), int(header[12]), int(header[19])
    assert bits_per_pixel == 32, "a 24-bit screen stores 32 bits per pixel"
    start = header_size + 12 * colours
    rows = np.frombuffer(data[start:start + height * bytes_per_line], dtype=np.uint8).reshape(height, bytes_per_line)
    pixels = rows[:, :4 * width].reshape(height, width, 4)
    return pixels[..., [2, 1, 0]] if byte_order == 0 else pixels[..., [1, 2, 3]]  # LSB first: B G R x


@pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xwd") is None,
                    reason="Xvfb and xwd are not installed (apt install xvfb x11-apps)")
def test_a_screenshot_of_the_window_shows_the_animated_frame(clip, tmp_path, capsys, monkeypatch):
    import subprocess

    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "640x480x24"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        display = ":" + server.stdout.readline().strip()
        monkeypatch.setenv("DISPLAY", display)
        from fom_cli.commands import live as live_command

        screenshots = []
        original = live_command.Window.show

        def show(self, frame):
            original(self, frame)
            if len(screenshots) < 3:  # the X server's own pixels of the window's picture, as a screen shows them
                dump = subprocess.run(["xwd", "-silent", "-display", display, "-id", str(self.label.winfo_id())],
                                      capture_output=True, check=True).stdout
                screenshots.append((frame.copy(), read_xwd(dump)))

        monkeypatch.setattr(live_command.Window, "show", show)
        code, report, err = live(["--driving", clip, "--window", "-o", tmp_path / "rec.mp4"], capsys)
        assert code == 0, err
        assert len(screenshots) == 3
        for frame, shot in screenshots:
            height, width = frame.shape[:2]
            # The label centres the picture inside its border: find it there, pixel for pixel.
            found = [(y, x) for y in range(shot.shape[0] - height + 1) for x in range(shot.shape[1] - width + 1)
                     if np.array_equal(shot[y:y + height, x:x + width], frame)]
            assert found, "the animated frame is not on the screen"
        assert not np.array_equal(screenshots[0][0], screenshots[2][0])  # and it is animated
    finally:
        server.kill()
