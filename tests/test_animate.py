"""`fom animate` end to end: real files in, decoded files out, checked frame by frame."""

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, carphone_path, driving_frames, make_clip, run_cli
from fom_cli.animation import Animator
from fom_cli.families import load_networks
from fom_cli.config import load_config
from fom_cli.media.video_in import VideoReader, probe

SOURCE = PARITY / "small-source.png"
DRIVING_DIR = PARITY / "small-driving"
# fp32: these tests compare frames with the original code's (auto would pick bf16 on a CPU that has it).
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--precision", "fp32", "--quiet"]


def read_png_frames(directory):
    paths = sorted(directory.glob("*.png"))
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(len(paths))]
    return np.stack([iio.imread(p) for p in paths]).astype(np.float32) / 255


@pytest.mark.parametrize("options, variant, key", [
    ([], "small-ac.npz", "relative_adapt"),  # defaults: relative, adapt-scale, align_corners true
    (["--no-adapt-scale"], "small-ac.npz", "relative"),
    (["--mode", "absolute"], "small-ac.npz", "absolute"),
    (["--align-corners", "false"], "small.npz", "relative_adapt"),
    (["--align-corners", "false", "--mode", "absolute"], "small.npz", "absolute"),
])
def test_png_frames_equal_the_original_predictions(tmp_path, capsys, options, variant, key):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL, *options], capsys)
    assert code == 0, err
    frames = read_png_frames(tmp_path / "out")
    expected = np.load(PARITY / variant)[f"{key}_prediction"]
    assert frames.shape == expected.shape == (8, 128, 128, 3)
    assert np.abs(frames - expected).max() <= 1 / 255 + 1e-6


def test_mp4_with_audio_keeps_fps_frame_count_and_sound(tmp_path, capsys):
    frames = np.concatenate([driving_frames()] * 3)  # 24 frames
    driving = make_clip(tmp_path / "drive.mp4", frames, fps=12, tone=True)
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "out.mp4", *MODEL], capsys)
    assert code == 0, err
    info = probe(tmp_path / "out.mp4")
    assert info.has_audio and info.num_frames == 24 and abs(info.fps - 12) < 1e-3
    assert abs(info.duration - 2.0) < 0.15  # the audio was trimmed to the video
    # --no-audio drops it; --fps sets the rate and keeps the duration (each frame shown twice).
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "mute.mp4", *MODEL, "--no-audio",
                            "--fps", "24"], capsys)
    info = probe(tmp_path / "mute.mp4")
    assert code == 0 and not info.has_audio and info.num_frames == 48 and abs(info.fps - 24) < 1e-3


def test_a_real_talking_head_video_with_another_aspect_ratio(tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, carphone_path(), "-o", tmp_path / "carphone.mp4",
                            "--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--find-best-frame"], capsys)
    assert code == 0, err
    assert "176x144" in err and "--fit crop" in err  # the note about the aspect ratio
    assert "best frame:" in err
    info = probe(tmp_path / "carphone.mp4")
    assert info.num_frames == 120 and info.size == (128, 128)


def test_best_frame_measures_motion_from_that_frame(tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL, "--best-frame", "3"],
                           capsys)
    assert code == 0, err
    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG))
    kp_detector, generator = networks.kp_detector, networks.generator
    driving = driving_frames().astype(np.float32) / 255
    animator = Animator(kp_detector, generator, iio.imread(SOURCE).astype(np.float32) / 255)
    animator.set_initial_frame(driving[3])
    expected = animator.animate(driving)
    assert np.abs(read_png_frames(tmp_path / "out") - expected).max() <= 1 / 255 + 1e-6
    # Frame 3 is the reference, so the output's frame 3 shows the source's own pose.
    assert not np.allclose(expected[3], expected[0])


def test_driving_keypoints_found_once_serve_every_source():
    """--all-faces finds the driving keypoints once and hands them to each face's Animator: the same
    frames as each Animator finding them itself."""
    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG))
    kp_detector, generator = networks.kp_detector, networks.generator
    driving = driving_frames().astype(np.float32) / 255
    source = iio.imread(SOURCE).astype(np.float32) / 255
    first = Animator(kp_detector, generator, source)
    shared = first.keypoints(driving)
    for other_source in (source, np.ascontiguousarray(source[:, ::-1])):
        alone, given = Animator(kp_detector, generator, other_source), Animator(kp_detector, generator, other_source)
        expected = alone.animate(driving)
        assert np.array_equal(given.animate(driving, shared), expected)
        # ...and they are used: another motion's keypoints make other frames.
        assert not np.allclose(given.animate(driving, first.keypoints(np.ascontiguousarray(driving[::-1]))), expected)


def test_side_by_side_gif_and_webm_outputs(tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "panels.gif", *MODEL, "--side-by-side"],
                           capsys)
    assert code == 0, err
    gif = iio.imread(tmp_path / "panels.gif", index=None, mode="RGB")  # frames with their own palettes
    assert gif.shape[0] == 8 and gif.shape[1:3] == (128, 3 * 128)
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out.webm", *MODEL], capsys)
    assert code == 0, err
    assert probe(tmp_path / "out.webm").num_frames == 8


def test_several_sources_and_drivers_write_every_pair(tmp_path, capsys):
    second = tmp_path / "second.png"
    iio.imwrite(second, np.ascontiguousarray(iio.imread(SOURCE)[:, ::-1]))
    code, _, err = run_cli(["animate", SOURCE, second, "--driving", DRIVING_DIR, "-o", tmp_path / "all", *MODEL],
                           capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert written == ["second__small-driving.mp4", "small-source__small-driving.mp4"]


def bad_input_cases(tmp_path):
    (tmp_path / "not-an-image.png").write_text("hello")
    (tmp_path / "empty-frames").mkdir()
    (tmp_path / "not-a-checkpoint.pth").write_bytes(b"\x00" * 100)
    (tmp_path / "a-file").write_text("x")
    typo = SMALL_CONFIG.read_text().replace("num_kp:", "num_kps:")
    (tmp_path / "typo.yaml").write_text(typo)
    return {
        "missing source": ([tmp_path / "missing.png", DRIVING_DIR], "does not exist"),
        "source not an image": ([tmp_path / "not-an-image.png", DRIVING_DIR], "not-an-image.png"),
        "driving without frames": ([SOURCE, tmp_path / "empty-frames"], "frames"),
        "not a checkpoint": ([SOURCE, DRIVING_DIR, "--checkpoint", tmp_path / "not-a-checkpoint.pth"], "checkpoint"),
        "checkpoint does not fit": ([SOURCE, DRIVING_DIR, "--checkpoint", SMALL_CHECKPOINT, "--config", "vox-256"],
                                    "does not fit the config"),
        "unwritable output": ([SOURCE, DRIVING_DIR, "-o", tmp_path / "a-file" / "out.mp4"], "a-file"),
        "unknown config key": ([SOURCE, DRIVING_DIR, "--config", tmp_path / "typo.yaml"], "num_kps"),
    }


@pytest.mark.parametrize("case", ["missing source", "source not an image", "driving without frames",
                                  "not a checkpoint", "checkpoint does not fit", "unwritable output",
                                  "unknown config key"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, case):
    args, expected = bad_input_cases(tmp_path)[case]
    if "-o" not in args:
        args = [*args, "-o", tmp_path / "out.mp4"]
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", SMALL_CHECKPOINT]
    if "--config" not in args and "not a checkpoint" != case:
        args = [*args, "--config", SMALL_CONFIG]
    code, out, err = run_cli(["animate", *args, "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fom: error: ") and expected in lines[0], err
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_the_installed_command_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fom_cli", "animate", tmp_path / "missing.png", DRIVING_DIR,
                             "-o", tmp_path / "out.mp4"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fom: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_documents_every_option(capsys):
    code = run_cli(["animate", "--help"])
    help_text = capsys.readouterr().out
    assert code == 0
    for option in ["--driving", "--output", "--checkpoint", "--config", "--align-corners", "--mode", "--adapt-scale",
                   "--no-adapt-scale", "--best-frame", "--find-best-frame", "--fit", "--fps", "--no-audio",
                   "--side-by-side", "--device", "--batch-size", "--quiet"]:
        assert option in help_text, option


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fom: error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, capsys):
    driving = make_clip(tmp_path / "d.mp4", driving_frames(), fps=12, tone=False)
    (tmp_path / "link.mp4").symlink_to(driving)
    original = driving.read_bytes()
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in DRIVING_DIR.iterdir():
        (frames / path.name).write_bytes(path.read_bytes())
    for driving_input, output in [(driving, driving), (driving, tmp_path / "link.mp4"),
                                  (tmp_path / "link.mp4", driving), (frames, frames)]:
        code, _, err = run_cli(["animate", SOURCE, driving_input, "-o", output, *MODEL, "--overwrite"], capsys)
        assert code == 2 and "is the driving video" in one_error_line(err)
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", SOURCE, *MODEL], capsys)
    assert code == 2 and "is the source image" in one_error_line(err)
    assert driving.read_bytes() == original
    assert sorted(p.name for p in frames.iterdir()) == sorted(p.name for p in DRIVING_DIR.iterdir())
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_outputs_of_several_pairs_that_clash_are_refused_naming_them(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "face.png").write_bytes(SOURCE.read_bytes())
    code, _, err = run_cli(["animate", tmp_path / "a/face.png", tmp_path / "b/face.png", "--driving", DRIVING_DIR,
                            "-o", tmp_path / "out", *MODEL], capsys)
    line = one_error_line(err)
    assert code == 2
    assert "out/face__small-driving.mp4" in line and "a/face.png" in line and "b/face.png" in line
    assert not (tmp_path / "out").exists()


def test_every_output_is_checked_before_the_model_loads(tmp_path, capsys):
    # The checkpoint is garbage, so any error about it would mean the model was read before the output.
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"\x00" * 100)
    (tmp_path / "a-file").write_text("x")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000000.png").write_bytes(SOURCE.read_bytes())
    for output, expected in [(tmp_path / "a-file" / "out.mp4", "a-file"), (tmp_path / "out.avi", ".avi"),
                             (frames, "--overwrite")]:
        code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", output, "--checkpoint", garbage, "--quiet",
                                "--find-best-frame"], capsys)
        assert code == 2 and expected in one_error_line(err)
    assert (frames / "000000.png").read_bytes() == SOURCE.read_bytes()


def test_overwrite_replaces_the_frames_an_earlier_run_wrote(tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL, "--mode", "absolute"],
                           capsys)
    assert code == 0, err
    absolute = read_png_frames(tmp_path / "out")
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL], capsys)
    assert code == 2 and "--overwrite" in one_error_line(err)
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL, "--overwrite"], capsys)
    assert code == 0, err
    relative = read_png_frames(tmp_path / "out")
    expected = np.load(PARITY / "small-ac.npz")["relative_adapt_prediction"]
    assert np.abs(relative - expected).max() <= 1 / 255 + 1e-6 and not np.allclose(relative, absolute)


def test_a_cut_off_driving_video_gets_a_warning_with_both_frame_counts(tmp_path, capsys):
    import imageio_ffmpeg

    noise = np.random.default_rng(0).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)  # ~4 KB a frame
    whole = make_clip(tmp_path / "whole.mp4", noise, fps=25, tone=False)
    indexed = tmp_path / "indexed.mp4"  # the index (moov) at the front, as web videos have it
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", whole, "-c", "copy", "-movflags",
                    "+faststart", indexed], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(indexed.read_bytes()[:80_000])
    code, _, err = run_cli(["animate", SOURCE, cut, "-o", tmp_path / "out.mp4", *MODEL], capsys)
    assert code == 0, err
    written = probe(tmp_path / "out.mp4").num_frames
    assert 0 < written < 100
    warnings = [line for line in err.splitlines() if line.startswith("fom: warning:")]
    assert len(warnings) == 1 and f"after {written} frames" in warnings[0] and "announces 100" in warnings[0]
    # A whole video gets no warning.
    code, _, err = run_cli(["animate", SOURCE, indexed, "-o", tmp_path / "whole-out.mp4", *MODEL], capsys)
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("fps", ["1e6", "0.001", "0", "nan"])
def test_fps_beyond_its_bounds_is_one_line(tmp_path, capsys, fps):
    code, out, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL, "--fps", fps],
                             capsys)
    assert code == 2
    assert err == f"fom: error: argument --fps: invalid frame rate (from 1 to 240 frames/s) value: '{fps}'\n"
    assert list(tmp_path.iterdir()) == []


def test_fps_at_its_bounds(tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "slow.mp4", *MODEL, "--fps", "1"],
                           capsys)
    assert code == 0, err
    # --fps keeps the driving video's duration: 8 frames at 25 fps are 0.32 s, shown by 1 frame at 1 fps.
    info = probe(tmp_path / "slow.mp4")
    assert info.num_frames == 1 and info.fps == pytest.approx(1)
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "fast.mp4", *MODEL, "--fps", "240"],
                           capsys)
    assert code == 0, err
    info = probe(tmp_path / "fast.mp4")
    assert info.num_frames == 77 and info.fps == pytest.approx(240)  # ceil(0.32 s * 240)


def test_usage_shows_the_two_forms_that_work(capsys):
    assert run_cli(["animate", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage == ("usage: fom animate SOURCE DRIVING -o OUTPUT [options]\n"
                     "       fom animate SOURCE [SOURCE ...] --driving VIDEO [VIDEO ...] -o OUTDIR [options]")
    # Pairs one after another (what argparse's own usage suggested) are refused, in one line that says how.
    code, out, err = run_cli(["animate", SOURCE, DRIVING_DIR, SOURCE, DRIVING_DIR, "-o", "out", *MODEL], capsys)
    assert code == 2 and err.count("\n") == 1 and "--driving" in err


def test_png_frames_say_that_the_sound_is_not_written(tmp_path, capsys):
    driving = make_clip(tmp_path / "drive.mp4", driving_frames(), fps=12, tone=True)
    model = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG]
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "frames/", *model], capsys)
    assert code == 0, err
    assert f"note: PNG frames carry no sound: the sound of {driving} is not written" in err
    assert len(read_png_frames(tmp_path / "frames")) == 8
    # Not when the sound was left out on purpose, nor when a video keeps it.
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "mute/", *model, "--no-audio"], capsys)
    assert code == 0 and "sound" not in err, err
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "out.mp4", *model], capsys)
    assert code == 0 and "sound" not in err and probe(tmp_path / "out.mp4").has_audio, err


def test_gpu_options_on_the_cpu_get_a_note(tmp_path, capsys, monkeypatch):
    # A CPU without native fp16 or bf16 (every CPU before Intel's Granite Rapids, for fp16).
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False, raising=False)
    model = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--device", "cpu"]
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "half.gif", *model,
                            "--precision", "fp16"], capsys)
    assert code == 0, err
    assert "note: --precision fp16 runs slower than fp32 on this CPU, not faster: it has no native fp16" in err
    assert iio.imread(tmp_path / "half.gif", index=None, mode="RGB").shape[0] == 8
    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "full.gif", *model], capsys)
    assert code == 0 and "runs slower" not in err and "note: precision fp32 (auto: no bf16 instructions" in err, err


def test_compiling_on_a_machine_without_gpu_hides_torchs_cuda_home_warning(tmp_path):
    # torch warns "No CUDA runtime is found" when it finds a CUDA toolkit (CUDA_HOME) but no GPU, the first
    # time compiling imports torch.utils.cpp_extension. The control run shows the warning does appear there.
    script = ("import sys\n"
              "from fom_cli.families import load_networks\n"
              "from fom_cli.config import load_config\n"
              f"config = load_config({str(SMALL_CONFIG)!r})\n"
              f"if sys.argv[1] == 'compile': load_networks({str(SMALL_CHECKPOINT)!r}, config, compile=True)\n"
              "import torch.utils.cpp_extension\n")
    environment = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    control, compiled = (subprocess.run([sys.executable, "-c", script, what], capture_output=True, text=True,
                                        env=environment, check=True) for what in ("control", "compile"))
    assert "No CUDA runtime" in control.stderr
    assert "No CUDA runtime" not in compiled.stderr, compiled.stderr


def audio_loudness(path, start, end, rate=8000):
    """Root mean square of a file's sound from `start` to `end` seconds (mono, int16 scale)."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "s16le",
                             "-ac", "1", "-ar", str(rate), "-"], capture_output=True, check=True)
    samples = np.frombuffer(result.stdout, dtype=np.int16).astype(np.float64)[round(start * rate):round(end * rate)]
    return float(np.sqrt(np.mean(samples ** 2)))


@pytest.fixture
def tone_from_one_second(tmp_path):
    """A 4 s driving clip at 12 fps (the fixture's frames, each shown for half a second), silent for its first
    second and a 440 Hz tone after: a sound that shows where it was cut."""
    import imageio_ffmpeg

    frames = np.repeat(driving_frames(), 6, axis=0)  # 48 frames
    silent = make_clip(tmp_path / "silent.mp4", frames, fps=12, tone=False)
    path = tmp_path / "drive.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    "aevalsrc='if(gte(t,1),0.5*sin(2*PI*440*t),0)':s=44100:d=4", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", str(path)], check=True)
    return path


def test_start_and_duration_select_frames_and_sound_by_time(tmp_path, capsys, tone_from_one_second):
    driving = tone_from_one_second
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "cut.mp4", *MODEL, "--start", "1",
                            "--duration", "2"], capsys)
    assert code == 0, err
    info = probe(tmp_path / "cut.mp4")
    assert info.num_frames == 24 and info.fps == pytest.approx(12) and info.has_audio
    assert info.duration == pytest.approx(2, abs=0.05)
    # The sound was cut at 1 s too: the tone plays from the output's start. Uncut, the first second is silent.
    assert audio_loudness(tmp_path / "cut.mp4", 0.1, 0.9) > 1000
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "whole.mp4", *MODEL], capsys)
    assert code == 0, err
    assert probe(tmp_path / "whole.mp4").num_frames == 48
    whole = tmp_path / "whole.mp4"
    assert audio_loudness(whole, 0.1, 0.9) < 50 and audio_loudness(whole, 1.1, 1.9) > 1000

    # The frames are those shown from 1 s to before 3 s, frames 12 to 35, and motion is measured from the
    # first of them: the same as animating a folder holding just those frames.
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "cut/", *MODEL, "--start", "1",
                            "--duration", "2"], capsys)
    assert code == 0, err
    decoded = list(VideoReader(driving).frames())
    (tmp_path / "part").mkdir()
    for i, frame in enumerate(decoded[12:36]):
        iio.imwrite(tmp_path / "part" / f"{i:06d}.png", frame)
    code, _, err = run_cli(["animate", SOURCE, tmp_path / "part", "-o", tmp_path / "expected/", *MODEL], capsys)
    assert code == 0, err
    assert np.abs(read_png_frames(tmp_path / "cut") - read_png_frames(tmp_path / "expected")).max() <= 1e-6
    # A start between frames takes the next frame, as ffmpeg's -ss does; no --duration runs to the end.
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "tail/", *MODEL, "--start", "3.45"], capsys)
    assert code == 0, err
    assert len(read_png_frames(tmp_path / "tail")) == 48 - 42


@pytest.mark.parametrize("options, message", [
    (["--start", "4"], "--start 4 is past the end of"),
    (["--start", "1.01", "--duration", "0.01"], "--duration 0.01 from 1.01 s holds no frame of"),
    (["--start", "-1"], "argument --start: invalid non-negative number value: '-1'"),
    (["--duration", "0"], "argument --duration: invalid positive number value: '0'"),
])
def test_start_and_duration_outside_the_video(tmp_path, capsys, tone_from_one_second, options, message):
    code, _, err = run_cli(["animate", SOURCE, tone_from_one_second, "-o", tmp_path / "out.mp4", *MODEL, *options],
                           capsys)
    assert code == 2 and err.startswith("fom: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.mp4").exists()


def audio_seconds(path):
    """How long the first audio stream of `path` plays, measured by decoding it."""
    import re

    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0",
               "-f", "null", "-"]
    stderr = subprocess.run(command, capture_output=True, text=True).stderr
    hours, minutes, seconds = re.findall(r"time=(\d+):(\d+):([\d.]+)", stderr)[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("fps, frames", [(50, 100), (12.5, 25), (7, 14)])
def test_fps_keeps_the_duration_so_the_sound_stays_in_sync(tmp_path, capsys, fps, frames):
    driving = make_clip(tmp_path / "drive.mp4", np.concatenate([driving_frames()] * 7)[:50], fps=25, tone=True)
    code, _, err = run_cli(["animate", SOURCE, driving, "-o", tmp_path / "out.mp4", *MODEL, "--fps", fps], capsys)
    assert code == 0, err
    info = probe(tmp_path / "out.mp4")
    assert info.num_frames == frames and abs(info.fps - fps) < 1e-3 and info.has_audio
    assert abs(info.num_frames / info.fps - 2.0) <= 1 / fps  # the driving video's two seconds
    assert abs(audio_seconds(tmp_path / "out.mp4") - info.num_frames / info.fps) <= 1 / fps


def test_fps_repeats_or_drops_whole_frames(tmp_path, capsys):
    """The driving frames are 25 fps: at 50 each prediction shows twice, at 12.5 every other one shows."""
    expected = np.load(PARITY / "small-ac.npz")["relative_adapt_prediction"]
    for fps, shown in [(50, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]), (12.5, [0, 2, 4, 6])]:
        output = tmp_path / f"at-{fps * 10:.0f}"
        code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", output, *MODEL, "--fps", fps], capsys)
        assert code == 0, err
        frames = read_png_frames(output)
        assert frames.shape[0] == len(shown)
        assert np.abs(frames - expected[shown]).max() <= 1 / 255 + 1e-6
