"""Pictures and videos in and out: read images, stream video frames, keep the audio, write outputs safely.

Everything that touches media files goes through this module, so the rest of fom works on plain numpy
arrays:

* images come back as float32 HxWx3 RGB in [0, 1] (`read_image`), and `fit_frame` brings any picture to
  the model's input size;
* videos are read frame by frame (`VideoReader.frames`) and written frame by frame (`VideoWriter.write`);
  decoding and encoding run in background threads behind small bounded queues, so memory does not grow
  with the length of a video and the model keeps working while ffmpeg does;
* outputs appear at their final path only once they are complete: a crash or Ctrl-C leaves nothing behind.

Videos go through the ffmpeg binary that ships with imageio-ffmpeg, so no system ffmpeg is needed.
Frames on the way in and out are uint8 HxWx3 RGB.
"""

import logging
import math
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Tuple

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

from fom_cli.errors import BadInput, BadOutput, FomError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")

# For a directory of frames, which carries no timing of its own, or a video that does not state its rate.
# 25 fps is what the FOMM datasets were recorded at.
DEFAULT_FPS = 25.0

# How many frames the background decoder or encoder may hold. A few are enough to keep both sides busy;
# more would only cost memory.
QUEUE_SIZE = 4

# Output containers that can carry a sound track, and the audio codec each one gets.
AUDIO_CODEC_FOR_CONTAINER = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}

# ffmpeg picks a muxer from the file name, but our temporary files end in ".tmp-<random>", so we name it.
FFMPEG_MUXER_FOR_EXTENSION = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".gif": "gif"}

# imageio-ffmpeg reports some harmless events (e.g. a rotated phone video) as logging warnings; without a
# handler Python would print them on stderr. An application that configures logging still sees them.
logging.getLogger("imageio_ffmpeg").addHandler(logging.NullHandler())


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------

def read_image(path) -> np.ndarray:
    """Read a picture as float32 HxWx3 RGB in [0, 1].

    8-bit pictures become exactly `pixels.astype(np.float32) / 255` (the original FOMM demo's values),
    16-bit ones are divided by 65535, grayscale is copied to three channels and transparency is
    composited over white (a cut-out portrait on white looks like a photo; on black it would not).
    """
    path = os.fspath(path)
    _check_image_path(path)
    return _to_float_rgb(_decode_image(path))


def _check_image_path(path):
    extension = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise BadInput(f"image not found: {path}; check the path")
    if os.path.isdir(path):
        raise BadInput(f"{path} is a directory; give an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if extension not in IMAGE_EXTENSIONS:
        raise BadInput(f"unsupported image type '{extension}' for {path}; "
                       f"use one of {', '.join(IMAGE_EXTENSIONS)}")


def _decode_image(path) -> np.ndarray:
    """The pixels as stored: uint8 or uint16, with 1 to 4 channels. BadInput if they cannot be read."""
    try:
        if _is_16bit_colour_png(path):
            return _decode_16bit_colour_png(path)
        with iio.imopen(path, "r", plugin="pillow") as image_file:
            pillow_mode = image_file.metadata(index=0)["mode"]
            # Modes Pillow gives us as usable arrays (palette images it expands itself); anything else
            # (CMYK or YCbCr JPEGs, 1-bit images, premultiplied alpha) is converted to plain RGB(A).
            usable_modes = ("L", "LA", "RGB", "RGBA", "P", "I;16", "I;16B", "I;16L", "I")
            convert_to = None
            if pillow_mode not in usable_modes:
                convert_to = "RGBA" if "A" in pillow_mode or "a" in pillow_mode else "RGB"
            # rotate=True applies the EXIF orientation, so phone photos come out the right way up.
            return image_file.read(index=0, mode=convert_to, rotate=True)
    except Exception as error:  # Pillow raises many kinds of error for a damaged file
        raise BadInput(f"could not read {path} as an image ({_first_line(error)}); "
                       f"check that the file is a complete, valid image") from None


def _is_16bit_colour_png(path) -> bool:
    """True for 16-bit RGB(A) or gray+alpha PNGs, which Pillow would silently cut down to 8 bits."""
    if os.path.splitext(path)[1].lower() != ".png":
        return False
    with open(path, "rb") as png_file:
        header = png_file.read(26)
    # PNG signature (8 bytes), IHDR chunk length and type (8), width and height (8), bit depth, colour type.
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    bit_depth, colour_type = header[24], header[25]
    gray_alpha, rgb, rgba = 4, 2, 6
    return bit_depth == 16 and colour_type in (gray_alpha, rgb, rgba)


def _decode_16bit_colour_png(path) -> np.ndarray:
    """Let ffmpeg decode the PNG into 16-bit RGBA, keeping every bit."""
    decoder = imageio_ffmpeg.read_frames(path, pix_fmt="rgba64le", bits_per_pixel=64)
    try:
        width, height = next(decoder)["size"]
        pixels = next(decoder)
    finally:
        decoder.close()
    return np.frombuffer(pixels, dtype="<u2").reshape(height, width, 4).astype(np.uint16)


def _to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float pixels with 1-4 channels -> float32 HxWx3 in [0, 1]."""
    if pixels.dtype == np.uint8:
        image = pixels.astype(np.float32) / 255
    elif pixels.dtype == np.bool_:
        image = pixels.astype(np.float32)
    elif np.issubdtype(pixels.dtype, np.integer):
        # 16-bit PNGs; Pillow's 32-bit "I" mode holds 16-bit values too.
        image = np.clip(pixels, 0, 65535).astype(np.float32) / 65535
    else:
        image = pixels.astype(np.float32)

    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels in (2, 4):
        colour, alpha = image[:, :, :-1], image[:, :, -1:]
        image = colour * alpha + (1 - alpha)  # over white
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image, dtype=np.float32)


def to_uint8(image) -> np.ndarray:
    """Float pixels in [0, 1] (clipped) -> uint8, rounded; uint8 passes through. fom's one conversion."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _to_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    """Pixels of any supported kind -> uint8 HxWx3 RGB, the frame format of this module."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    return to_uint8(_to_float_rgb(pixels))


# ----------------------------------------------------------------------------------------------------
# Fitting a picture to the model's size
# ----------------------------------------------------------------------------------------------------

def write_image(path, image):
    """Write an image (uint8, or float in [0, 1]) atomically: into a hidden temporary file next to it,
    renamed when complete. The format follows the extension (PNG for fom's outputs)."""
    path = Path(path)
    image = to_uint8(image)
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        iio.imwrite(temporary, image, extension=path.suffix or ".png")
        os.replace(temporary, path)
    except OSError as error:
        raise BadOutput(f"could not write {path} ({error.strerror or error}); check the free disk space "
                        f"and permissions") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def fit_frame(image, size, mode="crop") -> np.ndarray:
    """Bring `image` (uint8 or float HxWx3) to `size` = (height, width); float32 HxWx3 in [0, 1].

    mode "crop" cuts the centre of the picture to the target shape, then resizes; "pad" resizes the whole
    picture to fit inside and centres it on black; "stretch" resizes ignoring the aspect ratio, as the
    original FOMM demo did. A picture that already has the target size is only converted to float.
    """
    target_height, target_width = int(size[0]), int(size[1])
    image = np.asarray(image)
    height, width = image.shape[:2]

    if mode == "stretch":
        return resize(image, (target_height, target_width))

    if mode == "crop":
        # The largest box of the target's aspect ratio that fits in the picture, centred.
        crop_width = min(width, round(height * target_width / target_height))
        crop_height = min(height, round(width * target_height / target_width))
        top = (height - crop_height) // 2
        left = (width - crop_width) // 2
        return resize(image[top:top + crop_height, left:left + crop_width], (target_height, target_width))

    if mode == "pad":
        scale = min(target_height / height, target_width / width)
        fitted_height = min(target_height, max(1, round(height * scale)))
        fitted_width = min(target_width, max(1, round(width * scale)))
        fitted = resize(image, (fitted_height, fitted_width))
        canvas = np.zeros((target_height, target_width) + fitted.shape[2:], dtype=np.float32)
        top = (target_height - fitted_height) // 2
        left = (target_width - fitted_width) // 2
        canvas[top:top + fitted_height, left:left + fitted_width] = fitted
        return canvas

    raise ValueError(f"fit_frame mode must be 'crop', 'pad' or 'stretch', not {mode!r}")


def resize(image: np.ndarray, size) -> np.ndarray:
    """Bilinear resize to (height, width), anti-aliased when shrinking; float32 HxWx3 in [0, 1]. The one
    resize of fom: model inputs, face crops and detector working copies.

    torch's anti-aliased bilinear filter (a triangle filter widened by the shrink factor, as PIL's):
    within about 1/255 on average of scikit-image's resize that the original demo used, and 10x faster
    on a 720p frame, which matters when every frame of a long video passes through it.
    """
    if image.shape[:2] == tuple(size):
        return _as_float_image(image)
    shrinking = size[0] < image.shape[0] or size[1] < image.shape[1]
    pixels = torch.from_numpy(_as_float_image(image)).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(pixels, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False,
                            antialias=shrinking)
    return resized[0].permute(1, 2, 0).clamp(0, 1).contiguous().numpy()


def _as_float_image(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return image.astype(np.float32)


def aspect_ratio_differs(image_size, size) -> bool:
    """True when two (height, width) shapes differ by more than 1% in aspect ratio."""
    image_ratio = image_size[1] / image_size[0]
    target_ratio = size[1] / size[0]
    return abs(image_ratio / target_ratio - 1) > 0.01


# ----------------------------------------------------------------------------------------------------
# Background iteration
# ----------------------------------------------------------------------------------------------------

_ITEM, _ERROR, _END = "item", "error", "end"


def prefetch(iterable, size=QUEUE_SIZE):
    """Iterate `iterable` in a daemon thread, handing its items over through a queue of `size`.

    The producer runs at most `size` items ahead (plus the one it is trying to hand over), so memory stays
    bounded. An exception in the producer is raised here, in the consumer. Closing this generator (break,
    .close(), garbage collection) stops the producer and closes the source iterator in its own thread,
    which is what shuts down an ffmpeg process behind it. It waits for the item the producer is working
    on, so nothing is left running afterwards.
    """
    if size < 1:
        raise ValueError("prefetch size must be at least 1")
    handover = queue.Queue(maxsize=size)
    stopped = threading.Event()

    def hand_over(entry) -> bool:
        # Wait for room, but look up now and then: the consumer may have gone away.
        while not stopped.is_set():
            try:
                handover.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not hand_over((_ITEM, item)):
                    return
            hand_over((_END, None))
        except BaseException as error:  # everything goes to the consumer, who decides
            hand_over((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="fom-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, payload = handover.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise payload
            yield payload
    finally:
        stopped.set()
        # Free a producer blocked on a full queue right away instead of at its next look-up.
        try:
            while True:
                handover.get_nowait()
        except queue.Empty:
            pass
        producer.join()


# ----------------------------------------------------------------------------------------------------
# Probing
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What fom needs to know about a video before decoding it."""

    path: str
    fps: float
    num_frames: Optional[int]  # None when it cannot be known without decoding everything
    size: Tuple[int, int]  # (height, width) of the decoded frames
    has_audio: bool
    duration: Optional[float]  # seconds of video (num_frames / fps when known); None when unknown


def probe(path) -> VideoInfo:
    """Frame rate, frame count, size, audio presence and duration of a video, a GIF or a frames directory.

    Videos: ffmpeg reads the container header (fps, size, duration, audio) and then counts the video
    packets without decoding them, which is exact for ordinary files and takes a fraction of a second even
    for long videos (frames are read with ffmpeg's passthrough timing, one frame per packet). If the count
    fails, num_frames falls back to round(duration * fps).

    GIFs: fps comes from the average frame delay. Directories: the images in them, sorted by name
    (numbers in names compare as numbers), at 25 fps, without audio.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInput(f"video not found: {path}; check the path")
    if os.path.isdir(path):
        return _probe_frame_directory(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in VIDEO_EXTENSIONS:
        raise BadInput(f"unsupported video type '{extension}' for {path}; "
                       f"use one of {', '.join(VIDEO_EXTENSIONS)} or a directory of frames")
    if extension == ".gif":
        return _probe_gif(path)
    return _probe_with_ffmpeg(path)


def _frame_files(directory):
    """Image files in a directory in frame order: by name, numbers compared as numbers (frame2 < frame10)."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise BadInput(f"cannot list the frames in {directory} ({error.strerror}); check its permissions") from None

    def natural_key(name):
        return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]

    frames = [name for name in names
              if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
              and os.path.isfile(os.path.join(directory, name))]
    return [os.path.join(directory, name) for name in sorted(frames, key=natural_key)]


def _probe_frame_directory(path) -> VideoInfo:
    files = _frame_files(path)
    if not files:
        raise BadInput(f"{path} contains no frames; put images ({', '.join(IMAGE_EXTENSIONS)}) in it "
                       f"or give a video file")
    height, width = _to_uint8_rgb(_decode_image(files[0])).shape[:2]
    return VideoInfo(path=path, fps=DEFAULT_FPS, num_frames=len(files), size=(height, width),
                     has_audio=False, duration=len(files) / DEFAULT_FPS)


def _probe_gif(path) -> VideoInfo:
    try:
        with iio.imopen(path, "r", plugin="pillow") as gif:
            num_frames = gif.properties(index=...).n_images
            height, width = gif.properties(index=0).shape[:2]
            delays_ms = [gif.metadata(index=i).get("duration", 0) for i in range(num_frames)]
    except Exception as error:
        raise BadInput(f"could not read {path} as a GIF ({_first_line(error)}); "
                       f"check that the file is a complete, valid GIF") from None
    if not num_frames:
        raise BadInput(f"{path} has no frames; give a GIF with at least one frame")
    # Browsers play delays of 0 or 10 ms as 100 ms; do the same so the timing matches what people see.
    delays_ms = [delay if delay and delay > 10 else 100 for delay in delays_ms]
    duration = sum(delays_ms) / 1000
    return VideoInfo(path=path, fps=num_frames / duration, num_frames=num_frames, size=(height, width),
                     has_audio=False, duration=duration)


def _probe_with_ffmpeg(path) -> VideoInfo:
    result = _run_ffmpeg(["-i", path])  # no output file: ffmpeg describes the input and exits
    header = result.stderr
    video_line = _video_stream_line(header)
    if video_line is None:
        if "Input #0" in header:
            raise BadInput(f"{path} has no video stream; give a video with pictures in it")
        raise BadInput(f"could not read {path} as a video ({_last_ffmpeg_message(header)}); "
                       f"check that the file is a complete, playable video")

    size_match = re.search(r" (\d+)x(\d+)[,\s]", video_line)
    if size_match is None:
        raise BadInput(f"could not find the picture size of {path}; convert it to an ordinary mp4 and retry")
    width, height = int(size_match.group(1)), int(size_match.group(2))
    # ffmpeg turns phone videos filmed upright the right way round when decoding; report that size.
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", header)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width

    fps = _parse_rate(video_line, "fps") or _parse_rate(video_line, "tbr") or DEFAULT_FPS
    fps = _exact_frame_rate(fps)

    duration = None
    duration_match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
    if duration_match:
        hours, minutes, seconds = duration_match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)

    num_frames = _count_video_packets(path)
    if num_frames is None and duration:
        num_frames = round(duration * fps)
    if num_frames == 0:
        raise BadInput(f"{path} has no video frames; give a video with pictures in it")
    if num_frames is not None:
        # The container's duration covers its longest stream, often the sound; we want the pictures'.
        duration = num_frames / fps

    has_audio = re.search(r"Stream #\S+.*: Audio:", header) is not None
    return VideoInfo(path=path, fps=fps, num_frames=num_frames, size=(height, width),
                     has_audio=has_audio, duration=duration)


def _video_stream_line(header) -> Optional[str]:
    """The first real video stream in `ffmpeg -i` output; cover art ("attached pic") does not count."""
    for line in header.splitlines():
        if re.search(r"Stream #\S+.*: Video:", line) and "(attached pic)" not in line:
            return line
    return None


def _parse_rate(stream_line, unit) -> Optional[float]:
    """A rate such as "29.97 fps" or "1k tbr" from an ffmpeg stream line."""
    match = re.search(r"([\d.]+)(k?) " + unit, stream_line)
    if not match:
        return None
    rate = float(match.group(1)) * (1000 if match.group(2) else 1)
    return rate or None


def _exact_frame_rate(fps: float) -> float:
    """ffmpeg prints NTSC rates rounded (29.97); give back the real 30000/1001 so outputs stay in sync."""
    for nominal in (24, 30, 48, 60, 120, 240):
        ntsc_rate = nominal * 1000 / 1001
        if abs(fps - ntsc_rate) < 0.006:
            return ntsc_rate
    return fps


def _count_video_packets(path) -> Optional[int]:
    # Stream copy into the null muxer reads the container without decoding a single picture.
    result = _run_ffmpeg(["-i", path, "-map", "0:V:0", "-c", "copy", "-f", "null", "-"])
    counts = re.findall(r"frame=\s*(\d+)", result.stderr)
    if result.returncode != 0 or not counts:
        return None
    return int(counts[-1])


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

class VideoReader:
    """Frames of a video file, an animated GIF or a directory of images, read lazily.

    The attributes path, fps, size (height, width), num_frames, has_audio and duration come from probe().
    frames_decoded counts the frames the background decoder has produced in the latest frames() call.
    """

    def __init__(self, path):
        info = probe(path)
        self.path = info.path
        self.fps = info.fps
        self.size = info.size
        self.num_frames = info.num_frames
        self.has_audio = info.has_audio
        self.duration = info.duration
        self.frames_decoded = 0

    def __repr__(self):
        return (f"VideoReader({self.path!r}, fps={self.fps:.3f}, size={self.size}, "
                f"num_frames={self.num_frames}, has_audio={self.has_audio})")

    def frames(self, start=0, stop=None) -> Iterator[np.ndarray]:
        """uint8 HxWx3 RGB frames number start, start+1, ... up to (not including) stop.

        Decoding runs in a background thread a few frames ahead. Each call starts from the beginning of
        the file again; frames before `start` are decoded and skipped, which keeps frame numbers exact.
        """
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad frame range: start={start}, stop={stop}")
        self.frames_decoded = 0
        if os.path.isdir(self.path):
            decoded = self._decode_directory(start, stop)
        elif self.path.lower().endswith(".gif"):
            decoded = self._decode_gif(start, stop)
        else:
            decoded = self._decode_video(start, stop)
        return prefetch(decoded, size=QUEUE_SIZE)

    def _decode_video(self, start, stop):
        decoder = imageio_ffmpeg.read_frames(
            self.path,
            # The first real video stream, and every decoded picture exactly once (no frames dropped or
            # repeated to force a constant rate), so the frames match probe's packet count.
            output_params=["-map", "0:V:0", "-fps_mode", "passthrough"],
        )
        try:
            width, height = next(decoder)["size"]
            for index, raw_frame in enumerate(decoder):
                if stop is not None and index >= stop:
                    return
                if index < start:
                    continue
                self.frames_decoded += 1
                # A copy, so that callers get an ordinary writable array rather than a view of bytes.
                yield np.frombuffer(raw_frame, dtype=np.uint8).reshape(height, width, 3).copy()
        except (OSError, RuntimeError) as error:
            raise BadInput(f"could not decode {self.path} after {self.frames_decoded + start} frames "
                           f"({_first_line(error)}); the file may be damaged or truncated") from None
        finally:
            decoder.close()  # stops ffmpeg

    def _decode_gif(self, start, stop):
        try:
            with iio.imopen(self.path, "r", plugin="pillow") as gif:
                # RGBA for every frame: the first comes as a palette image, whose transparent colour
                # would otherwise turn black while later frames show white.
                for index, pixels in enumerate(gif.iter(mode="RGBA")):
                    if stop is not None and index >= stop:
                        return
                    if index < start:
                        continue
                    self.frames_decoded += 1
                    yield _to_uint8_rgb(pixels)
        except (OSError, EOFError, ValueError) as error:
            raise BadInput(f"could not decode {self.path} after {self.frames_decoded + start} frames "
                           f"({_first_line(error)}); the GIF may be damaged or truncated") from None

    def _decode_directory(self, start, stop):
        for file in _frame_files(self.path)[start:stop]:
            _check_image_path(file)
            frame = _to_uint8_rgb(_decode_image(file))
            if frame.shape[:2] != self.size:
                raise BadInput(f"{file} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                               f"{self.size[1]}x{self.size[0]}; all frames in a directory must have one size")
            self.frames_decoded += 1
            yield frame


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------

_FINISH = object()  # queue marker: no more frames, finish the file
_ABORT = object()  # queue marker: stop now, the output will be thrown away


class _EncodingAborted(BaseException):
    """Thrown into imageio-ffmpeg's writer to abandon a video.

    write_frames kills ffmpeg at once on a BaseException that is not an Exception (it treats it like
    Ctrl-C), whereas an ordinary close would wait for ffmpeg to finish encoding a file we are deleting.
    """


class VideoWriter:
    """Write frames to a video, a GIF or a directory of PNGs; the output appears only when complete.

    The kind of output follows the path: .mp4/.mov/.mkv are H.264, .webm is VP9, .gif an animated GIF,
    and a path ending in a slash, an existing directory or a name without extension gets lossless PNGs
    000000.png, 000001.png, ... Use it as a context manager:

        with VideoWriter("out.mp4", fps=reader.fps, audio_from=reader.path) as writer:
            for frame in frames:
                writer.write(frame)

    On a clean exit the video is finished, the sound of `audio_from` (from `audio_start` seconds on,
    cut to the video's length) is added where the container can carry it, and the file is moved onto
    `path`. On an exception nothing is left behind. `quality` is None for the encoder's defaults or 1-10
    (10 best), as in imageio; it applies to H.264 and VP9.
    """

    def __init__(self, path, fps, audio_from=None, audio_start=0.0, quality=None):
        self.path = os.fspath(path)
        self.frames_written = 0

        if not math.isfinite(float(fps)) or fps <= 0:
            raise FomError(f"the frame rate must be a positive number, not {fps}")
        self.fps = float(fps)
        if quality is not None and not 1 <= quality <= 10:
            raise FomError(f"video quality must be between 1 and 10, not {quality}")
        self.quality = quality
        if audio_start < 0:
            raise FomError(f"the audio start must be 0 seconds or later, not {audio_start}")
        self.audio_start = float(audio_start)

        self._is_directory = self._looks_like_directory(self.path)
        self._extension = "" if self._is_directory else os.path.splitext(self.path)[1].lower()
        if not self._is_directory and self._extension not in FFMPEG_MUXER_FOR_EXTENSION:
            raise BadOutput(f"cannot write '{self._extension}' files ({self.path}); use .mp4, .mov, .mkv, "
                            f".webm, .gif or a directory for PNG frames")
        if self._is_directory and os.path.isfile(self.path):
            raise BadOutput(f"{self.path} is a file; give a directory path for PNG frames or a video file name")
        if not self._is_directory and os.path.isdir(self.path):
            raise BadOutput(f"{self.path} is a directory; give a video file name")

        # Only ask about the sound now if we will use it, but early: a bad audio file should stop the run
        # before hours of animating, not after.
        self._audio_source = None
        if audio_from is not None and self._extension in AUDIO_CODEC_FOR_CONTAINER:
            audio_info = probe(audio_from)
            if audio_info.has_audio:
                self._audio_source = audio_info

        self._temporary_paths = []  # everything to delete if we do not finish
        self._output_directory = os.path.dirname(os.path.normpath(self.path)) or "."
        self._created_directories = self._make_directories(self._output_directory)
        try:
            self._check_writable(self._output_directory)
        except BadOutput:
            self._remove_created_directories()
            raise

        self._frame_size = None  # (height, width) of the first frame; all frames must match it
        self._frames = queue.Queue(maxsize=QUEUE_SIZE)
        self._encoder = None
        self._encoder_error = None

    # -- the with-block ---------------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:
            self._abandon()
            return False
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise
        return False

    # -- frames -----------------------------------------------------------------------------------

    def write(self, frame):
        """Queue one frame (uint8 HxWx3 RGB, or float in [0, 1]) for the background encoder."""
        frame = self._as_uint8_frame(frame)
        if self._frame_size is None:
            self._frame_size = frame.shape[:2]
            self._start_encoder()
        elif frame.shape[:2] != self._frame_size:
            raise ValueError(f"frame {self.frames_written} is {frame.shape[1]}x{frame.shape[0]}, but the "
                             f"first was {self._frame_size[1]}x{self._frame_size[0]}")
        self._hand_to_encoder(frame)
        self.frames_written += 1

    @staticmethod
    def _as_uint8_frame(frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a frame must be an HxWx3 RGB array, not shape {frame.shape}")
        if frame.dtype == np.uint8:
            return frame.copy()  # the caller may reuse its buffer while we are still encoding
        return to_uint8(frame)

    def _hand_to_encoder(self, item):
        while True:
            if self._encoder_error is not None:
                raise self._encoder_error
            try:
                self._frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._encoder.is_alive():  # it stopped early; do not wait for room forever
                    raise self._encoder_error or BadOutput(f"the encoder for {self.path} stopped "
                                                           f"unexpectedly; try again")

    # -- background encoding ----------------------------------------------------------------------

    def _start_encoder(self):
        self._encoded_path = self._new_temporary_path()
        if self._is_directory:
            try:
                os.mkdir(self._encoded_path)
            except OSError as error:
                raise BadOutput(f"cannot create a folder next to {self.path} ({error.strerror}); "
                                f"choose another output path") from None
            work = self._encode_png_frames
        else:
            work = self._encode_with_ffmpeg
        self._encoder = threading.Thread(target=self._run_encoder, args=(work,), name="fom-encoder",
                                         daemon=True)
        self._encoder.start()

    def _run_encoder(self, work):
        try:
            work()
        except _EncodingAborted:
            pass
        except FomError as error:
            self._encoder_error = error
        except Exception as error:
            self._encoder_error = BadOutput(f"could not write {self.path} ({_first_line(error)}); "
                                            f"check the free disk space and permissions")

    def _next_frame(self):
        item = self._frames.get()
        if item is _ABORT:
            raise _EncodingAborted()
        return item

    def _encode_png_frames(self):
        index = 0
        while (frame := self._next_frame()) is not _FINISH:
            iio.imwrite(os.path.join(self._encoded_path, f"{index:06d}.png"), frame)
            index += 1

    def _encode_with_ffmpeg(self):
        codec, pixel_format, quality, options = self._encoder_settings()
        pad_to_even = pixel_format == "yuv420p"  # 4:2:0 chroma needs even width and height
        height, width = self._frame_size
        if pad_to_even:
            height, width = height + height % 2, width + width % 2
        encoder = imageio_ffmpeg.write_frames(
            self._encoded_path, (int(width), int(height)), fps=self._exact_fps(),
            codec=codec, pix_fmt_out=pixel_format, quality=quality,
            macro_block_size=1,  # we make sizes even ourselves; its default would rescale frames
            ffmpeg_log_level="error",  # quiet on success, still says why on failure
            output_params=options + ["-f", FFMPEG_MUXER_FOR_EXTENSION[self._extension]],
        )
        encoder.send(None)  # starts ffmpeg
        finished = False
        try:
            while (frame := self._next_frame()) is not _FINISH:
                if pad_to_even:
                    # Repeat the last row/column rather than add black, so no line shows at the edge.
                    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                try:
                    encoder.send(np.ascontiguousarray(frame))
                except OSError:  # the pipe broke: ffmpeg has quit and printed why on stderr
                    raise BadOutput(f"ffmpeg stopped while encoding {self.path} (its reason is shown above); "
                                    f"check the free disk space and permissions") from None
            finished = True
        finally:
            if finished:
                encoder.close()  # waits for ffmpeg to finish the file
            else:
                try:
                    encoder.throw(_EncodingAborted())  # kills ffmpeg without waiting
                except _EncodingAborted:
                    pass

    def _encoder_settings(self):
        """(codec, pixel format, imageio quality, extra ffmpeg output options) for this output."""
        # Convert with the BT.709 matrix and tag the video as BT.709. Browsers and players assume BT.709
        # for untagged video, so ffmpeg's default (BT.601, untagged) would shift the colours slightly.
        bt709 = ["-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                        "setparams=range=tv:colorspace=bt709:color_primaries=bt709:color_trc=bt709"]
        if self._extension in (".mp4", ".mov", ".mkv"):
            # faststart puts the index first, so a browser can start playing before the download ends.
            faststart = ["-movflags", "+faststart"] if self._extension in (".mp4", ".mov") else []
            return "libx264", "yuv420p", self.quality, bt709 + faststart
        if self._extension == ".webm":
            # libvpx-vp9 needs an explicit constant quality (crf with b:v 0); its default bitrate is
            # low. cpu-used 4 and row-mt make it several times faster at a small cost in size.
            crf = round((1 - (self.quality or 5) / 10) * 63)
            return "libvpx-vp9", "yuv420p", None, bt709 + ["-crf", str(crf), "-b:v", "0", "-cpu-used", "4",
                                                          "-row-mt", "1"]
        # GIF: one palette built from all frames, then dithered onto it; looks far better than the
        # default fixed palette.
        palette = ["-vf", "split[frames][copy];[copy]palettegen[palette];[frames][palette]paletteuse"]
        return "gif", "pal8", None, palette

    def _exact_fps(self) -> Fraction:
        # As a fraction, so 29.97002997 (30000/1001) and 12.5 reach ffmpeg exactly.
        return Fraction(self.fps).limit_denominator(1001)

    # -- finishing --------------------------------------------------------------------------------

    def _finish(self):
        if self.frames_written == 0:
            raise BadInput(f"no frames were written to {self.path}; check that the input has frames "
                           f"in the chosen range")
        self._hand_to_encoder(_FINISH)
        self._encoder.join()
        if self._encoder_error is not None:
            raise self._encoder_error

        if self._is_directory:
            self._move_frames_into_place()
            return
        self._check_encoded_file()
        finished_path = self._encoded_path
        if self._audio_source is not None:
            finished_path = self._add_audio()
        try:
            os.replace(finished_path, self.path)
        except OSError as error:
            raise BadOutput(f"could not move the finished video onto {self.path} ({error.strerror}); "
                            f"check its permissions") from None
        self._temporary_paths.remove(finished_path)
        self._remove_temporary_paths()

    def _check_encoded_file(self):
        # write_frames does not report ffmpeg's exit status; make sure a readable video came out.
        if not os.path.isfile(self._encoded_path) or os.path.getsize(self._encoded_path) == 0:
            raise BadOutput(f"ffmpeg could not encode {self.path} (its reason is shown above); "
                            f"check the free disk space and permissions")
        header = _run_ffmpeg(["-i", self._encoded_path]).stderr
        if _video_stream_line(header) is None:
            raise BadOutput(f"ffmpeg could not encode {self.path} ({_last_ffmpeg_message(header)}); "
                            f"check the free disk space and try again")

    def _add_audio(self) -> str:
        """Mux the sound into a new temporary file; the video stream is copied, not re-encoded."""
        with_audio = self._new_temporary_path()
        duration = self.frames_written / self.fps
        arguments = ["-v", "error", "-y",
                     "-i", self._encoded_path,
                     "-ss", f"{self.audio_start:.6f}", "-i", self._audio_source.path,
                     "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "copy", "-c:a", AUDIO_CODEC_FOR_CONTAINER[self._extension],
                     "-t", f"{duration:.6f}"]
        if self._extension in (".mp4", ".mov"):
            arguments += ["-movflags", "+faststart"]
        arguments += ["-f", FFMPEG_MUXER_FOR_EXTENSION[self._extension], with_audio]
        result = _run_ffmpeg(arguments)
        if result.returncode != 0:
            raise BadInput(f"could not add the sound of {self._audio_source.path} to {self.path} "
                           f"({_last_ffmpeg_message(result.stderr)}); use a video whose sound plays, "
                           f"or leave the sound out")
        return with_audio

    def _move_frames_into_place(self):
        try:
            os.makedirs(self.path, exist_ok=True)
            # Old frames from an earlier, longer run would otherwise look like part of this one.
            for name in os.listdir(self.path):
                if re.fullmatch(r"\d{6}\.png", name):
                    os.remove(os.path.join(self.path, name))
            for name in sorted(os.listdir(self._encoded_path)):
                os.replace(os.path.join(self._encoded_path, name), os.path.join(self.path, name))
        except OSError as error:
            raise BadOutput(f"could not write the frames into {self.path} ({error.strerror}); "
                            f"check its permissions") from None
        self._remove_temporary_paths()

    def _abandon(self):
        """Stop the encoder and delete every trace of the output, leaving any error to the caller."""
        if self._encoder is not None and self._encoder.is_alive():
            # Empty the queue so the marker fits, then wait for the encoder to notice it.
            try:
                while True:
                    self._frames.get_nowait()
            except queue.Empty:
                pass
            self._frames.put(_ABORT)
            self._encoder.join()
        self._remove_temporary_paths()
        self._remove_created_directories()

    def _remove_created_directories(self):
        for directory in reversed(self._created_directories):
            try:
                os.rmdir(directory)  # only succeeds if still empty, which is what we want
            except OSError:
                pass

    # -- temporary files --------------------------------------------------------------------------

    def _new_temporary_path(self) -> str:
        """A hidden name next to the output, on the same filesystem, so os.replace is atomic."""
        name = os.path.basename(os.path.normpath(self.path))
        temporary = os.path.join(self._output_directory, f".{name}.tmp-{secrets.token_hex(4)}")
        self._temporary_paths.append(temporary)
        return temporary

    def _remove_temporary_paths(self):
        for temporary in self._temporary_paths:
            if os.path.isdir(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
            elif os.path.lexists(temporary):
                try:
                    os.remove(temporary)
                except OSError:
                    pass
        self._temporary_paths = []

    @staticmethod
    def _looks_like_directory(path) -> bool:
        return (path.endswith(("/", os.sep)) or os.path.isdir(path)
                or not os.path.splitext(os.path.normpath(path))[1])

    def _make_directories(self, directory):
        """Create `directory` and missing parents; return those created, so an abort can remove them."""
        missing = []
        while directory and not os.path.isdir(directory):
            missing.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
        created = []
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except OSError as error:
                for made in reversed(created):
                    os.rmdir(made)
                reason = "it is a file" if os.path.isfile(directory) else error.strerror
                raise BadOutput(f"cannot create the output folder {directory} ({reason}); "
                                f"choose another output path") from None
            created.append(directory)
        return created

    def _check_writable(self, directory):
        probe_path = os.path.join(directory, f".fom-write-test-{secrets.token_hex(4)}")
        try:
            with open(probe_path, "xb"):
                pass
            os.remove(probe_path)
        except OSError as error:
            raise BadOutput(f"cannot write to the output folder {directory} ({error.strerror}); "
                            f"choose another output path") from None


# ----------------------------------------------------------------------------------------------------
# ffmpeg helpers
# ----------------------------------------------------------------------------------------------------

def _run_ffmpeg(arguments) -> subprocess.CompletedProcess:
    """Run imageio-ffmpeg's ffmpeg with its console output captured (text), never shown."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin"] + list(arguments)
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")


def _last_ffmpeg_message(stderr) -> str:
    """ffmpeg's last complaint, without its "[component @ 0x...]" prefix, for a one-line error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("At least one output file")]
    if not lines:
        return "ffmpeg gave no reason"
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
