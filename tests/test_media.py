"""Tests for fom_cli.media on real files: tiny pictures and clips made on the spot with numpy and ffmpeg."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import skimage.data
import skimage.transform

from fom_cli.media import video_in
from fom_cli.errors import BadInput, BadOutput, FomError
from fom_cli.media.images import aspect_ratio_differs, fit_frame, read_image, resize, resize_uint8, to_uint8
from fom_cli.media.video_in import VideoReader, prefetch, probe
from fom_cli.media.video_out import VideoWriter

REPO = Path(__file__).resolve().parent.parent
CLIP_FPS = 25
CLIP_FRAMES = 50  # 2 seconds
CLIP_SIZE = (48, 64)  # height, width
AUDIO_SECONDS = 3  # longer than the clip, so trimming shows


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------

def run_ffmpeg(*arguments):
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *arguments]
    subprocess.run(command, check=True, capture_output=True)


def audio_seconds(path):
    """How long the first audio stream of `path` plays, measured by decoding it."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path),
               "-map", "0:a:0", "-f", "null", "-"]
    stderr = subprocess.run(command, capture_output=True, text=True).stderr
    hours, minutes, seconds = re.findall(r"time=(\d+):(\d+):([\d.]+)", stderr)[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def child_processes():
    """Process ids of this test process's live children (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, parent = fields[0], int(fields[1])
            if parent == os.getpid() and state != "Z":
                children.append(int(entry))
    return children


def no_child_processes_left(patience=5.0):
    """True once every child process has exited; a killed ffmpeg may take a moment to die."""
    if not sys.platform.startswith("linux"):
        return True
    deadline = time.monotonic() + patience
    while child_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fom_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("fom-")]


def leftovers(directory):
    """Hidden temporary files or folders that an output left in `directory`."""
    return [name for name in os.listdir(directory) if ".tmp-" in name or name.startswith(".fom-")]


def gradient_image(height=24, width=32):
    rows = np.linspace(0, 255, height)[:, None]
    columns = np.linspace(0, 255, width)[None, :]
    return np.stack([rows + 0 * columns, columns + 0 * rows, (rows + columns) / 2], axis=2).astype(np.uint8)


def numbered_frames(count, size=(32, 32)):
    """Frames whose gray level tells their index (0, 5, 10, ...), so order survives lossy codecs."""
    return [np.full(size + (3,), (index * 5) % 256, dtype=np.uint8) for index in range(count)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2-second 64x48 test-pattern mp4 at 25 fps with a 3-second sine tone."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc=size={CLIP_SIZE[1]}x{CLIP_SIZE[0]}:rate={CLIP_FPS}:duration=2",
               "-f", "lavfi", "-i", f"sine=frequency=440:duration={AUDIO_SECONDS}",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
    return path


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension, lossless", [(".png", True), (".bmp", True), (".jpg", False),
                                                  (".jpeg", False), (".webp", False)])
def test_image_round_trip(tmp_path, extension, lossless):
    pixels = gradient_image()
    path = tmp_path / f"picture{extension}"
    iio.imwrite(path, pixels)
    image = read_image(path)
    assert image.shape == (24, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    if lossless:
        assert np.array_equal(image, pixels.astype(np.float32) / 255)
    else:
        assert np.abs(image - pixels / 255).mean() < 0.03


def test_uint8_png_is_bit_exact(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "noise.png", pixels)
    image = read_image(str(tmp_path / "noise.png"))
    expected = pixels.astype(np.float32) / 255
    assert image.dtype == np.float32
    assert image.tobytes() == expected.tobytes()


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = gradient_image()[:, :, 0]
    iio.imwrite(tmp_path / "gray.png", gray)
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (24, 32, 3)
    for channel in range(3):
        assert np.array_equal(image[:, :, channel], gray.astype(np.float32) / 255)


def test_rgba_is_composited_over_white(tmp_path):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[..., :3] = (200, 100, 0)
    pixels[0, 0, 3] = 0  # fully transparent
    pixels[0, 1, 3] = 255  # opaque
    pixels[0, 2, 3] = 128  # half
    iio.imwrite(tmp_path / "cutout.png", pixels)
    image = read_image(tmp_path / "cutout.png")
    colour = np.array([200, 100, 0], dtype=np.float32) / 255
    assert np.allclose(image[0, 0], 1.0)
    assert np.array_equal(image[0, 1], colour)
    alpha = np.float32(128 / 255)
    assert np.allclose(image[0, 2], colour * alpha + (1 - alpha), atol=1e-6)


def test_gray_with_alpha_is_composited_over_white(tmp_path):
    pixels = np.zeros((2, 2, 2), dtype=np.uint8)
    pixels[..., 0] = 50
    pixels[0, :, 1] = 255
    iio.imwrite(tmp_path / "la.png", pixels)
    image = read_image(tmp_path / "la.png")
    assert np.allclose(image[0], 50 / 255)
    assert np.allclose(image[1], 1.0)


def test_16bit_gray_png_is_divided_by_65535(tmp_path):
    pixels = (np.arange(6 * 7).reshape(6, 7) * 1500).astype(np.uint16)
    iio.imwrite(tmp_path / "deep.png", pixels)
    image = read_image(tmp_path / "deep.png")
    expected = pixels.astype(np.float32) / 65535
    assert np.array_equal(image, np.repeat(expected[:, :, None], 3, axis=2))


def test_16bit_rgb_png_keeps_all_bits(tmp_path):
    # Pillow would cut this down to 8 bits; media reads it at full depth.
    pixels = np.random.default_rng(1).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    raw = tmp_path / "pixels.raw"
    raw.write_bytes(pixels.astype("<u2").tobytes())
    run_ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb48le", "-s", "6x5", "-i", str(raw),
               "-pix_fmt", "rgb48be", str(tmp_path / "deep.png"))
    image = read_image(tmp_path / "deep.png")
    assert np.array_equal(image, pixels.astype(np.float32) / 65535)


def test_bad_images_raise_bad_input(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a picture")
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        tmp_path / "missing.png": "not found",
        tmp_path: "is a directory",
        tmp_path / "notes.txt": "unsupported image type",
        tmp_path / "broken.png": "could not read",
    }
    for path, expected in cases.items():
        with pytest.raises(BadInput, match=expected) as caught:
            read_image(path)
        assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------------
# fit_frame
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("shape", [(40, 90), (90, 40), (33, 33), (10, 12)])
def test_fit_frame_gives_target_size(mode, shape):
    image = np.random.default_rng(2).integers(0, 256, shape + (3,), dtype=np.uint8)
    fitted = fit_frame(image, (32, 32), mode=mode)
    assert fitted.shape == (32, 32, 3) and fitted.dtype == np.float32
    assert fitted.min() >= 0 and fitted.max() <= 1


def test_crop_keeps_the_centre_of_a_wide_image():
    image = np.zeros((20, 60, 3), dtype=np.uint8)
    image[:, :, 2] = 255  # blue sides
    image[:, 20:40] = (255, 0, 0)  # red centre square
    fitted = fit_frame(image, (10, 10), mode="crop")
    assert np.allclose(fitted, [1, 0, 0])


def test_pad_centres_the_image_on_black():
    image = np.full((20, 60, 3), 255, dtype=np.uint8)
    fitted = fit_frame(image, (30, 30), mode="pad")
    assert np.allclose(fitted[:10], 0) and np.allclose(fitted[20:], 0)
    assert np.allclose(fitted[11:19], 1)


def test_stretch_is_close_to_the_original_demo_resize():
    image = skimage.data.astronaut()
    expected = skimage.transform.resize(image, (256, 256))  # what the FOMM demo does
    ours = fit_frame(image, (256, 256), mode="stretch")
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert np.abs(ours - expected).mean() < 1.5 / 255


def test_same_size_is_untouched():
    image = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for mode in ("crop", "pad", "stretch"):
        assert np.array_equal(fit_frame(image, (16, 24), mode=mode), image.astype(np.float32) / 255)
    as_float = np.random.default_rng(5).random((16, 24, 3)).astype(np.float32)
    assert np.array_equal(fit_frame(as_float, (16, 24)), as_float)


def test_aspect_ratio_differs():
    assert not aspect_ratio_differs((256, 256), (512, 512))
    assert not aspect_ratio_differs((1080, 1920), (720, 1282))  # within 1%
    assert aspect_ratio_differs((1080, 1920), (256, 256))


# ----------------------------------------------------------------------------------------------------
# prefetch
# ----------------------------------------------------------------------------------------------------

def test_prefetch_passes_items_and_errors_through():
    def numbers_then_failure():
        yield from range(5)
        raise BadInput("broken at 5")

    received = []
    with pytest.raises(BadInput, match="broken at 5"):
        for item in prefetch(numbers_then_failure(), size=2):
            received.append(item)
    assert received == [0, 1, 2, 3, 4]
    assert not fom_threads()


def finishes(function, within=30):
    """Run `function` in a thread; its result or exception, or an AssertionError if it is still running
    after `within` seconds (a hang: the limit is far above the time it needs)."""
    outcome = {}

    def call():
        try:
            outcome["result"] = function()
        except BaseException as error:
            outcome["error"] = error
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"{function.__name__} hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_a_producer_that_dies_before_its_first_item_raises_in_the_consumer():
    class Unreadable:
        def __iter__(self):
            raise OSError("the decoder could not start")

    def consume():
        return list(prefetch(Unreadable()))
    with pytest.raises(OSError, match="could not start"):
        finishes(consume)
    assert not fom_threads()


def test_abandoning_a_video_does_not_wait_for_a_stuck_encoder(tmp_path, monkeypatch):
    from fom_cli.media import video_out

    stuck, encoding = threading.Event(), threading.Event()

    def hangs(*args, **kwargs):  # a PNG encoder that never returns, like a hung ffmpeg
        encoding.set()
        stuck.wait()
    monkeypatch.setattr(video_out, "write_encoded_image", hangs)

    def write_then_fail():
        with VideoWriter(tmp_path / "frames/", fps=25) as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8))
            encoding.wait()
            raise KeyboardInterrupt  # Ctrl-C while the encoder hangs
    try:
        with pytest.raises(KeyboardInterrupt):
            finishes(write_then_fail)
        assert os.listdir(tmp_path) == []  # the output and its temporary folder are gone already
    finally:
        stuck.set()


def test_prefetch_stays_bounded_and_stops_when_closed():
    produced = 0
    source_closed = threading.Event()

    def endless():
        nonlocal produced
        try:
            while True:
                produced += 1
                yield produced
        finally:
            source_closed.set()

    items = prefetch(endless(), size=3)
    for consumed in range(1, 51):
        next(items)
        if consumed % 10 == 0:
            time.sleep(0.01)  # give the producer every chance to run ahead
        # 3 in the queue, plus one it holds while waiting for room.
        assert produced <= consumed + 3 + 1
    items.close()
    assert source_closed.is_set()
    assert not fom_threads()


# ----------------------------------------------------------------------------------------------------
# Probing and reading
# ----------------------------------------------------------------------------------------------------

def test_probe_video(clip):
    info = probe(clip)
    assert info.fps == CLIP_FPS
    assert info.num_frames == CLIP_FRAMES
    assert info.size == CLIP_SIZE
    assert info.has_audio
    assert info.duration == pytest.approx(CLIP_FRAMES / CLIP_FPS)  # the pictures', not the longer sound's


def test_reader_yields_every_frame(clip):
    reader = VideoReader(clip)
    assert (reader.fps, reader.num_frames, reader.size, reader.has_audio) == (CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, True)
    frames = list(reader.frames())
    assert len(frames) == CLIP_FRAMES
    assert all(frame.shape == CLIP_SIZE + (3,) and frame.dtype == np.uint8 for frame in frames)
    # A second call starts over; start/stop pick the same frames out.
    middle = list(reader.frames(start=10, stop=13))
    assert len(middle) == 3
    assert all(np.array_equal(a, b) for a, b in zip(middle, frames[10:13]))


def test_early_break_stops_decoding(clip):
    reader = VideoReader(clip)
    started = time.monotonic()
    for index, _ in enumerate(reader.frames()):
        if index == 2:
            break
    assert time.monotonic() - started < 5
    assert not fom_threads()
    assert no_child_processes_left()


def test_frames_directory_as_input(tmp_path):
    # Names sort as numbers (frame2 before frame10); other files and hidden files are ignored.
    for number in (1, 2, 10):
        iio.imwrite(tmp_path / f"frame{number}.png", np.full((8, 10, 3), number * 20, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not a frame")
    iio.imwrite(tmp_path / ".hidden.png", np.zeros((8, 10, 3), dtype=np.uint8))
    reader = VideoReader(tmp_path)
    assert (reader.fps, reader.num_frames, reader.size, reader.has_audio) == (25.0, 3, (8, 10), False)
    assert [int(frame[0, 0, 0]) for frame in reader.frames()] == [20, 40, 200]


def test_gif_input_timing_and_transparency(tmp_path):
    frames = np.zeros((4, 10, 12, 4), dtype=np.uint8)
    frames[..., 3] = 255
    frames[:, :3, :3, 3] = 0  # a transparent corner in every frame
    for index in range(4):
        frames[index, ..., 0] = 60 * index
    iio.imwrite(tmp_path / "anim.gif", frames, duration=[40, 40, 80, 40], loop=0, disposal=2)
    reader = VideoReader(tmp_path / "anim.gif")
    assert reader.fps == pytest.approx(4 / 0.2) and reader.num_frames == 4 and reader.size == (10, 12)
    decoded = list(reader.frames())
    assert [int(frame[5, 5, 0]) for frame in decoded] == [0, 60, 120, 180]
    assert all((frame[0, 0] == 255).all() for frame in decoded)  # transparent shows white, every frame


def test_corrupt_frame_in_directory_names_the_file(tmp_path):
    for number in range(3):
        iio.imwrite(tmp_path / f"{number:06d}.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "000003.png").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="000003.png"):
        list(VideoReader(tmp_path).frames())
    assert not fom_threads()


def test_not_a_video_raises_bad_input(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(np.random.default_rng(6).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty_directory = tmp_path / "empty"
    empty_directory.mkdir()
    (tmp_path / "picture.png").write_bytes(b"")
    cases = {fake: "could not read", empty_directory: "no frames", tmp_path / "missing.mp4": "not found",
             tmp_path / "picture.png": "unsupported video type"}
    for path, expected in cases.items():
        with pytest.raises(BadInput, match=expected) as caught:
            VideoReader(path)
        assert "\n" not in str(caught.value)


def test_audio_only_file_is_not_a_video(tmp_path):
    path = tmp_path / "sound.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(path))
    with pytest.raises(BadInput, match="no video stream"):
        VideoReader(path)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------

def test_mp4_with_audio_is_trimmed_to_the_video(clip, tmp_path, capfd):
    reader = VideoReader(clip)
    output = tmp_path / "out.mp4"
    with VideoWriter(output, reader.fps, audio_from=clip, audio_start=0.5) as writer:
        for frame in reader.frames(stop=25):  # one second of the two
            writer.write(frame)
    assert writer.frames_written == 25
    info = probe(output)
    assert (info.fps, info.num_frames, info.size, info.has_audio) == (CLIP_FPS, 25, CLIP_SIZE, True)
    assert audio_seconds(output) == pytest.approx(1.0, abs=0.05)
    assert leftovers(tmp_path) == []
    assert capfd.readouterr().err == ""  # ffmpeg stayed quiet


def test_when_the_sound_cannot_be_added_the_silent_video_is_kept(clip, tmp_path, monkeypatch, capsys):
    from fom_cli.media import video_out

    run_ffmpeg = video_out.run_ffmpeg

    def muxing_fails(arguments):
        if "1:a:0" in arguments:  # the call that adds the sound
            return subprocess.CompletedProcess(arguments, 1, "", "[aac @ 0x1] Unsupported channel layout\n")
        return run_ffmpeg(arguments)
    monkeypatch.setattr(video_out, "run_ffmpeg", muxing_fails)
    reader = VideoReader(clip)
    output = tmp_path / "out.mp4"
    with VideoWriter(output, reader.fps, audio_from=clip) as writer:
        for frame in reader.frames():
            writer.write(frame)
    info = probe(output)
    assert info.num_frames == CLIP_FRAMES and not info.has_audio
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fom: warning: could not add the sound") and "channel layout" in err[0]
    assert leftovers(tmp_path) == []


def test_audio_start_after_the_sound_ends_gives_a_silent_video(clip, tmp_path):
    with VideoWriter(tmp_path / "late.mp4", 25, audio_from=clip, audio_start=AUDIO_SECONDS + 1) as writer:
        for frame in numbered_frames(5):
            writer.write(frame)
    info = probe(tmp_path / "late.mp4")
    assert info.num_frames == 5 and not info.has_audio


@pytest.mark.parametrize("fps", [30, 30000 / 1001, 12.5])
def test_frame_rate_is_preserved(tmp_path, fps):
    output = tmp_path / "rate.mp4"
    with VideoWriter(output, fps) as writer:
        for frame in numbered_frames(6):
            writer.write(frame)
    info = probe(output)
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert info.num_frames == 6
    with VideoWriter(tmp_path / "copy.mp4", info.fps) as writer:  # a reader's fps written back out
        writer.write(numbered_frames(1)[0])
    assert probe(tmp_path / "copy.mp4").fps == pytest.approx(fps, abs=1e-6)


def test_odd_sizes_and_float_frames(tmp_path):
    output = tmp_path / "odd.mp4"
    with VideoWriter(output, 25) as writer:
        for frame in numbered_frames(5, size=(31, 45)):
            writer.write(frame.astype(np.float32) / 255)
    info = probe(output)
    assert info.size == (32, 46) and info.num_frames == 5


def test_colours_survive_h264(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 150, 50)]
    with VideoWriter(tmp_path / "colours.mp4", 25) as writer:
        for colour in colours:
            writer.write(np.full((32, 32, 3), colour, dtype=np.uint8))
    decoded = list(VideoReader(tmp_path / "colours.mp4").frames())
    for colour, frame in zip(colours, decoded):
        assert np.abs(frame[8:24, 8:24].mean(axis=(0, 1)) - colour).max() < 8


@pytest.mark.parametrize("name", ["out.webm", "out.gif", "out.mkv", "out.mov", "frames/"])
def test_other_outputs_decode_back(clip, tmp_path, name):
    output = os.path.join(tmp_path, name)
    frames = numbered_frames(12)
    with VideoWriter(output, 12.5, audio_from=clip) as writer:
        for frame in frames:
            writer.write(frame)
    reader = VideoReader(output)
    decoded = list(reader.frames())
    assert len(decoded) == reader.num_frames == 12
    levels = [int(frame.mean().round()) for frame in decoded]
    assert all(abs(level - int(expected[0, 0, 0])) <= 3 for level, expected in zip(levels, frames))
    if name.endswith("/"):
        assert sorted(os.listdir(output)) == [f"{index:06d}.png" for index in range(12)]
        assert all(np.array_equal(a, b) for a, b in zip(decoded, frames))  # lossless
    elif name.endswith(".gif"):
        assert reader.fps == 12.5 and not reader.has_audio
    else:
        assert reader.fps == 12.5 and reader.has_audio
    assert leftovers(tmp_path) == []


GIF_WRITER = """
import resource, sys
import numpy as np
from fom_cli.media.video_out import VideoWriter
y, x = np.mgrid[0:128, 0:128]
with VideoWriter(sys.argv[2], 25) as writer:
    for i in range(int(sys.argv[1])):
        writer.write(np.stack([(x + i) % 256, y, (x + y + 3 * i) % 256], axis=-1).astype(np.uint8))
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB, the largest ffmpeg it ran
"""


def test_gif_output_memory_does_not_grow_with_the_length(tmp_path):
    """ffmpeg's peak memory writing a GIF of 120 frames against one of 20. With one palette for the whole
    video it held every frame until the end: about 0.4 MB more per 128x128 frame, 40 MB more here."""
    def peak_kib(frames):
        output = tmp_path / f"{frames}.gif"
        result = subprocess.run([sys.executable, "-c", GIF_WRITER, str(frames), str(output)], capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        assert iio.imread(output, index=None, mode="RGB").shape == (frames, 128, 128, 3)
        return int(result.stdout.strip())
    assert peak_kib(120) - peak_kib(20) < 10 * 1024


def test_frames_folder_is_never_mixed_with_other_files(tmp_path):
    """A folder of frames replaces an earlier run's frames only with overwrite, atomically, and a folder
    holding anything fom did not write (a user's 000500.png among their notes) is never touched."""
    output = tmp_path / "frames"
    output.mkdir()
    for index in range(5):
        iio.imwrite(output / f"{index:06d}.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(BadOutput, match="already holds frames; pass --overwrite"):
        VideoWriter(output, 25)
    with VideoWriter(output, 25, overwrite=True) as writer:
        for frame in numbered_frames(2, size=(8, 8)):
            writer.write(frame)
    assert sorted(os.listdir(output)) == ["000000.png", "000001.png"]
    assert iio.imread(output / "000000.png").shape == (8, 8, 3)

    (output / "keep.txt").write_text("not ours")
    with pytest.raises(BadOutput, match=r"holds files fom did not write \(keep.txt\)"):
        VideoWriter(output, 25, overwrite=True)
    assert sorted(os.listdir(output)) == ["000000.png", "000001.png", "keep.txt"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "frames/"])
@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_the_block_leaves_nothing(clip, tmp_path, name, interruption):
    output = os.path.join(tmp_path, "sub", name)
    with pytest.raises(interruption):
        with VideoWriter(output, 25, audio_from=clip) as writer:
            for frame in numbered_frames(10):
                writer.write(frame)
            raise interruption()
    assert os.listdir(tmp_path) == []  # not even the folder it made
    assert not fom_threads()
    assert no_child_processes_left()


def test_zero_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(FomError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", 25):
            pass
    assert os.listdir(tmp_path) == []


def test_bad_output_paths(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(BadOutput, match="is a file") as caught:
        VideoWriter(tmp_path / "a_file" / "out.mp4", 25)
    assert "\n" not in str(caught.value)
    with pytest.raises(BadOutput, match="cannot write '.xyz'"):
        VideoWriter(tmp_path / "out.xyz", 25)
    with pytest.raises(BadOutput, match="is a file"):
        VideoWriter(tmp_path / "a_file", 25)  # no extension means a frames directory
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(BadOutput, match="cannot write"):
            VideoWriter(locked / "out.mp4", 25)
    with pytest.raises(FomError, match="frame rate"):
        VideoWriter(tmp_path / "out.mp4", 0)


def test_streaming_many_frames_keeps_the_reader_bounded(tmp_path):
    source = tmp_path / "long.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32:rate=25:duration=12", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", str(source))
    reader = VideoReader(source)
    assert reader.num_frames == 300
    furthest_ahead = 0
    with VideoWriter(tmp_path / "copy.mp4", reader.fps) as writer:
        for consumed, frame in enumerate(reader.frames(), start=1):
            if consumed % 50 == 0:
                time.sleep(0.02)  # let the decoder fill its queue
            furthest_ahead = max(furthest_ahead, reader.frames_decoded - consumed)
            writer.write(frame)
    assert furthest_ahead <= video_in.QUEUE_SIZE + 1
    assert writer.frames_written == 300
    assert probe(tmp_path / "copy.mp4").num_frames == 300


def test_the_8_bit_resize_matches_the_float_one_and_takes_read_only_frames_quietly():
    """resize_uint8 (face crops, detector copies) runs torch's uint8 kernel: within one level of the float
    resize rounded, shrinking and enlarging; decoded frames are read-only arrays, and torch's warning about
    them would reach the user's terminal."""
    import warnings

    frame = skimage.data.astronaut()
    frame.setflags(write=False)
    for size in [(200, 180), (700, 640)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resized = resize_uint8(frame, size)
        assert resized.dtype == np.uint8 and resized.shape == size + (3,)
        assert np.abs(resized.astype(int) - to_uint8(resize(frame, size)).astype(int)).max() <= 1
