"""A write that fails (a full disk, a file size limit, a read-only folder) is one line naming the cause,
exit code 2, nothing left behind and the earlier output at the path intact: in every container, with and
without sound, whichever step the failure hits (mid-encode, the trailer, adding the sound).

A full disk is played by RLIMIT_FSIZE in a subprocess (what ENOSPC does to a writer, with "File too large"
for "No space left on device"). The limits are set from sizes measured in the test, by writing the same
output once without a limit, so they do not depend on the encoders' versions. Leftover temporaries of a
killed run, and the frame count that guards every video, are tested here too.
"""

import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, driving_frames, make_clip, once_per_run, run_cli
from fom_cli.errors import BadOutput
from fom_cli.media.ffmpeg import count_video_frames, write_failure
from fom_cli.media.files import ABANDONED_AFTER_SECONDS, write_json
from fom_cli.media.video_out import VideoWriter, check_frame_count
from test_failures import drop_permission_override, one_error_line

REPO = Path(__file__).resolve().parent.parent
PREVIOUS = b"the previous output, which must survive"
FLAT_FRAMES = 8  # the first frames are one flat gray; the rest noise, which compresses badly
FRAMES = 24

# Writes one output in a process of its own and reports a FomError as fom's error boundary does (cli.py).
WRITER = r"""
import sys
import numpy as np
from fom_cli.errors import FomError

what, output, audio = sys.argv[1], sys.argv[2], sys.argv[3] or None
noise = np.random.default_rng(0)

def frame(index):
    if index < %(flat)d:
        return np.full((64, 64, 3), 128, dtype=np.uint8)
    return noise.integers(0, 256, (64, 64, 3), dtype=np.uint8)

try:
    if what == "video":
        from fom_cli.media.video_out import VideoWriter
        with VideoWriter(output, 12, audio_from=audio, overwrite=True) as writer:
            for index in range(%(frames)d):
                writer.write(frame(index))
    elif what == "image":
        from fom_cli.media.images import write_image
        write_image(output, frame(%(flat)d))
    elif what == "json":
        from fom_cli.media.files import write_json
        write_json(output, {"values": noise.random(2000).tolist()})
except FomError as error:
    print(f"fom: error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
""" % {"flat": FLAT_FRAMES, "frames": FRAMES}


def write_in_subprocess(what, output, audio=None, file_size_limit=None, preexec_fn=None):
    """Run WRITER; with `file_size_limit`, no file it (or its ffmpeg) writes may grow beyond that many
    bytes. Python ignores SIGXFSZ, and fom's ffmpeg inherits that, so writes fail with EFBIG."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", WRITER, what, str(output), str(audio or "")], capture_output=True,
                          text=True, env=environment, timeout=120,
                          preexec_fn=preexec_fn or (limit_file_size if file_size_limit else None))


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """A 4-second clip with a 440 Hz tone, longer than the 2-second outputs."""
    return make_clip(tmp_path_factory.mktemp("sound") / "tone.mp4", np.zeros((48, 32, 32, 3), np.uint8), fps=12)


@pytest.fixture(scope="module")
def finished_sizes(tmp_path_factory, sound):
    """{(extension, with sound): bytes} of each output written without a limit (measured once per test
    run, whatever the number of pytest-xdist workers). The silent encoding is the same with or without
    sound: adding the sound is a step of its own, after it."""
    def measure():
        folder = tmp_path_factory.mktemp("finished")
        sizes = {}
        for extension in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
            for with_sound in (False, True) if extension != ".gif" else (False,):
                output = folder / f"{'sound' if with_sound else 'silent'}{extension}"
                result = write_in_subprocess("video", output, sound if with_sound else None)
                assert result.returncode == 0, result.stderr
                sizes[f"{extension}-{with_sound}"] = np.array(output.stat().st_size)
        return sizes
    measured = once_per_run("write-failure-sizes", tmp_path_factory, measure)
    return {(name.split("-")[0], name.endswith("True")): int(size) for name, size in measured.items()}


def limit_for(step, silent, with_sound):
    """A file size limit that makes the write fail in `step`, from the finished outputs' sizes."""
    if step == "mid-encode":
        return silent // 2
    if step == "trailer":
        return silent - 1  # all but the very last byte of the silent video
    assert with_sound > silent + 1000, "the sound should add kilobytes"
    return (silent + with_sound) // 2  # the silent video fits; with its sound it does not


def assert_failed_cleanly(result, output, previous_names):
    """Exit 2, one line naming the OS's reason, the earlier output intact and nothing else left."""
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "File too large" in line and output.name in line
    assert sorted(os.listdir(output.parent)) == previous_names


VIDEO_CASES = [(extension, with_sound, step) for extension in (".mp4", ".mov", ".mkv", ".webm")
               for with_sound in (False, True)
               for step in (("mid-encode", "trailer", "sound") if with_sound else ("mid-encode", "trailer"))]
VIDEO_CASES += [(".gif", False, "mid-encode"), (".gif", False, "trailer")]


@pytest.mark.parametrize("extension, with_sound, step", VIDEO_CASES)
def test_a_full_disk_while_writing_a_video(tmp_path, sound, finished_sizes, extension, with_sound, step):
    output = tmp_path / f"out{extension}"
    output.write_bytes(PREVIOUS)
    limit = limit_for(step, finished_sizes[extension, False], finished_sizes.get((extension, True)))
    result = write_in_subprocess("video", output, sound if with_sound else None, file_size_limit=limit)
    assert "could not add the sound" not in result.stderr  # a failed write is no reason to drop the sound
    assert_failed_cleanly(result, output, [output.name])
    assert output.read_bytes() == PREVIOUS


@pytest.mark.parametrize("failing_frame", ["first", "first noise"])
def test_a_full_disk_while_writing_png_frames(tmp_path, failing_frame):
    """The frames folder replaces an earlier run's frames (overwrite): a failure keeps those, byte for byte."""
    finished = tmp_path / "finished"
    assert write_in_subprocess("video", f"{finished}/").returncode == 0
    flat_size, noise_size = [(finished / f"{index:06d}.png").stat().st_size for index in (0, FLAT_FRAMES)]
    shutil.rmtree(finished)
    output = tmp_path / "frames"
    output.mkdir()
    earlier = {f"{index:06d}.png": PREVIOUS + bytes([index]) for index in range(3)}
    for name, data in earlier.items():
        (output / name).write_bytes(data)
    limit = flat_size - 1 if failing_frame == "first" else (flat_size + noise_size) // 2
    result = write_in_subprocess("video", f"{output}/", file_size_limit=limit)
    assert_failed_cleanly(result, output, ["frames"])
    assert {path.name: path.read_bytes() for path in output.iterdir()} == earlier


@pytest.mark.parametrize("what, name", [("image", "out.png"), ("json", "metrics.json")])
def test_a_full_disk_while_writing_a_picture_or_json(tmp_path, what, name):
    output = tmp_path / name
    output.write_bytes(PREVIOUS)
    result = write_in_subprocess(what, output, file_size_limit=1000)
    assert_failed_cleanly(result, output, [name])
    assert output.read_bytes() == PREVIOUS


@pytest.mark.parametrize("name", ["out.mp4", "frames/", "out.png", "metrics.json"])
def test_a_read_only_folder_is_one_line_and_the_earlier_output_stays(tmp_path, name):
    folder = tmp_path / "read-only"
    folder.mkdir()
    output = folder / name
    if name.endswith("/"):
        output.mkdir()
        (output / "000000.png").write_bytes(PREVIOUS)
    else:
        output.write_bytes(PREVIOUS)
    folder.chmod(0o555)
    try:
        result = write_in_subprocess("image" if name.endswith(".png") else "json" if name.endswith(".json")
                                     else "video", output, preexec_fn=drop_permission_override)
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's permission override here ({error})")
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert "Permission denied" in one_error_line(result.stderr)
    assert sorted(os.listdir(folder)) == [output.name]
    assert (output / "000000.png" if name.endswith("/") else output).read_bytes() == PREVIOUS


# ----------------------------------------------------------------------------------------------------
# fom animate, end to end: the case a user met (the disk filled while the sound was being added)
# ----------------------------------------------------------------------------------------------------

def test_fom_animate_names_a_leftover_and_a_full_disk_while_adding_the_sound_is_an_error(tmp_path, capsys):
    """Before, the video was kept without its sound and fom exited 0, saying 'ffmpeg gave no reason'."""
    driving = make_clip(tmp_path / "talk.mp4", driving_frames(), fps=12, tone=True)
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / f".clip.mp4.tmp-{dead_pid()}-1a2b3c4d"  # from a run that was SIGKILLed
    leftover.write_bytes(b"half a video")
    animate = ["animate", PARITY / "small-source.png", driving, "--checkpoint", SMALL_CHECKPOINT,
               "--config", SMALL_CONFIG]
    code, _, err = run_cli([*animate, "-o", out / "silent.mp4", "--no-audio"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if leftover.name in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "interrupted fom run" in notes[0], err
    leftover.unlink()  # as the note says
    code, _, err = run_cli([*animate, "-o", out / "sound.mp4", "--quiet"], capsys)
    assert code == 0, err
    # The model's frames may differ in their last bits between this process and the next (thread
    # counts): the middle of the window, kilobytes from either end, is still between the two sizes.
    limit = limit_for("sound", (out / "silent.mp4").stat().st_size, (out / "sound.mp4").stat().st_size)
    for name in ("silent.mp4", "sound.mp4"):
        (out / name).unlink()
    output = out / "clip.mp4"
    output.write_bytes(PREVIOUS)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "fom_cli", *map(str, animate), "-o", str(output), "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert_failed_cleanly(result, output, ["clip.mp4"])
    assert output.read_bytes() == PREVIOUS


# ----------------------------------------------------------------------------------------------------
# Temporaries a killed run left behind
# ----------------------------------------------------------------------------------------------------

def dead_pid():
    """The id of a process that has exited (and been reaped): no process has it, for now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_old(path):
    two_days_ago = time.time() - 2 * ABANDONED_AFTER_SECONDS
    os.utime(path, (two_days_ago, two_days_ago))


def test_temporaries_of_killed_runs_are_named_then_removed_and_nothing_else_is_touched(tmp_path, caplog):
    gone = dead_pid()
    young = tmp_path / f".out.mp4.tmp-{gone}-1a2b3c4d"
    young.write_bytes(b"half a video")
    old = tmp_path / f".out.gif.tmp-{gone}-00ff00ff"
    old.write_bytes(b"half a gif")
    old_folder = tmp_path / f".frames.tmp-{gone}-0badf00d"
    old_folder.mkdir()
    (old_folder / "000000.png").write_bytes(b"a frame")
    live = tmp_path / f".out.webm.tmp-{os.getpid()}-12345678"  # this very process: being written
    live.write_bytes(b"being written")
    look_alikes = [".notes.tmp-backup", ".notes.tmp-1a2b3c4d", f".notes.tmp-{gone}-1A2B3C4D",
                   f"notes.tmp-{gone}-1a2b3c4d", f".notes.tmp-{gone}-1a2b3c4d.bak"]
    for name in look_alikes:
        (tmp_path / name).write_text("the user's")
    for path in [old, old_folder, live] + [tmp_path / name for name in look_alikes]:
        make_old(path)

    with caplog.at_level(logging.INFO, logger="fom_cli"):
        write_json(tmp_path / "metrics.json", {"a": 1})
        write_json(tmp_path / "more.json", {"b": 2})  # the same run, the same folder: said once
    notes = [record.getMessage() for record in caplog.records]
    assert notes.count(f"{young} is left from an interrupted fom run (pid {gone}); remove it") == 1
    assert sum("removed" in note for note in notes) == 2 and len(notes) == 3
    assert all(live.name not in note and "notes" not in note for note in notes)
    assert sorted(os.listdir(tmp_path)) == sorted([young.name, live.name, "metrics.json", "more.json", *look_alikes])
    assert all((tmp_path / name).read_text() == "the user's" for name in look_alikes)


# ----------------------------------------------------------------------------------------------------
# The frame count, and telling a failed write from other failures of ffmpeg
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", [".mp4", ".webm", ".gif"])
def test_a_video_holding_fewer_frames_than_written_is_refused(tmp_path, extension):
    whole = tmp_path / f"whole{extension}"
    with VideoWriter(whole, 12) as writer:
        for index in range(FRAMES):
            writer.write(np.random.default_rng(index).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    check_frame_count(whole, FRAMES, "out")  # whole: no error
    cut = tmp_path / f"cut{extension}"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 2 // 3])
    frames_left = count_video_frames(cut)
    assert 0 < frames_left < FRAMES
    with pytest.raises(BadOutput, match=f"out{extension} holds {frames_left} of the {FRAMES} frames"):
        check_frame_count(cut, FRAMES, f"out{extension}")
    (tmp_path / "not-a-video.mp4").write_bytes(b"nothing")
    assert count_video_frames(tmp_path / "not-a-video.mp4") == 0


@pytest.mark.parametrize("returncode, stderr, reason", [
    (234, "[out#0/mp4 @ 0x5] Error writing trailer: No space left on device\n", "No space left on device"),
    (229, "[out#0/webm @ 0x5] Error closing file: File too large\n", "File too large"),
    (-25, "", "File too large"),  # killed by SIGXFSZ: a file size limit all the same
    (243, "[out#0/mp4 @ 0x5] Error opening output /x/.out.mp4.tmp-1-00000000: Permission denied\n",
     "Permission denied"),
    (243, "[in#1 @ 0x5] Error opening input: Permission denied\nError opening input file /x/a.mp4.\n", None),
    (187, "[in#1/mov @ 0x5] Error during demuxing: Input/output error\n", None),
    (251, "[out#0/mp4 @ 0x5] Error muxing a packet: Input/output error\n", "Input/output error"),
    (1, "/x/sound.mp4: Permission denied\n", None),  # older ffmpeg, naming the input it cannot open
    (1, "[aac @ 0x1] Unsupported channel layout\n", None),
])
def test_a_failed_write_is_told_from_a_sound_that_cannot_be_added(returncode, stderr, reason):
    result = subprocess.CompletedProcess([], returncode, "", stderr)
    assert write_failure(result, inputs=["/x/sound.mp4"]) == reason
