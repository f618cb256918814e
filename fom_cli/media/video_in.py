"""Videos in: probe a video, a GIF or a folder of frames, and read its frames lazily.

Frames come out as uint8 HxWx3 RGB. Decoding runs in a background thread behind a small bounded queue
(`prefetch`), so memory does not grow with the length of a video and the model keeps working while
ffmpeg decodes.
"""

import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from fom_cli.errors import BadInput, first_line
from fom_cli.media.ffmpeg import count_video_packets, last_ffmpeg_message, run_ffmpeg
from fom_cli.media.images import (IMAGE_EXTENSIONS, check_image_path, decode_image, frame_files,
                                  to_uint8_rgb)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")

# For a directory of frames, which carries no timing of its own, or a video that does not state its rate.
# 25 fps is what the FOMM datasets were recorded at.
DEFAULT_FPS = 25.0

# How many frames the background decoder or encoder may hold. A few are enough to keep both sides busy;
# more would only cost memory.
QUEUE_SIZE = 4

# Seconds to wait for a background decoder or encoder to stop when its work is abandoned (Ctrl-C, an
# error): long enough for ffmpeg to quit cleanly, short enough that a hung one does not hang fom.
STOP_TIMEOUT = 1.0

# imageio-ffmpeg reports some harmless events (e.g. a rotated phone video) as logging warnings; without a
# handler Python would print them on stderr. An application that configures logging still sees them.
logging.getLogger("imageio_ffmpeg").addHandler(logging.NullHandler())



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
        iterator = None
        try:
            iterator = iter(iterable)  # may fail too: that failure must reach the consumer like any other
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
            kind, payload = _receive(handover, producer)
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
        # A producer stuck in a hung decoder must not hang Ctrl-C: give up waiting after a while (it is a
        # daemon thread, gone when the process ends).
        producer.join(timeout=STOP_TIMEOUT)


def _receive(handover, producer):
    """The next entry from the producer; RuntimeError if it died without a word instead of waiting forever."""
    while True:
        try:
            return handover.get(timeout=0.1)
        except queue.Empty:
            if not producer.is_alive():
                try:  # it may have handed over its last entry just before it ended
                    return handover.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the background frame reader stopped without a result") from None


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
    # Frames the container's header announces, when the file holds fewer (cut off): num_frames otherwise.
    announced_frames: Optional[int] = None
    # How much wider than tall one pixel is shown (ffmpeg's SAR, "sample aspect ratio"): 1 for square
    # pixels; carphone's 128:117 makes its 176x144 frames 192.6x144 on screen.
    pixel_aspect: float = 1.0


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



def _probe_frame_directory(path) -> VideoInfo:
    files = frame_files(path)
    if not files:
        raise BadInput(f"{path} contains no frames; put images ({', '.join(IMAGE_EXTENSIONS)}) in it "
                       f"or give a video file")
    height, width = to_uint8_rgb(decode_image(files[0])).shape[:2]
    return VideoInfo(path=path, fps=DEFAULT_FPS, num_frames=len(files), size=(height, width),
                     has_audio=False, duration=len(files) / DEFAULT_FPS)


def _probe_gif(path) -> VideoInfo:
    try:
        with iio.imopen(path, "r", plugin="pillow") as gif:
            num_frames = gif.properties(index=...).n_images
            height, width = gif.properties(index=0).shape[:2]
            delays_ms = [gif.metadata(index=i).get("duration", 0) for i in range(num_frames)]
    except Exception as error:
        raise BadInput(f"could not read {path} as a GIF ({first_line(error)}); "
                       f"check that the file is a complete, valid GIF") from None
    if not num_frames:
        raise BadInput(f"{path} has no frames; give a GIF with at least one frame")
    # Browsers play delays of 0 or 10 ms as 100 ms; do the same so the timing matches what people see.
    delays_ms = [delay if delay and delay > 10 else 100 for delay in delays_ms]
    duration = sum(delays_ms) / 1000
    return VideoInfo(path=path, fps=num_frames / duration, num_frames=num_frames, size=(height, width),
                     has_audio=False, duration=duration)


def _probe_with_ffmpeg(path) -> VideoInfo:
    result = run_ffmpeg(["-i", path])  # no output file: ffmpeg describes the input and exits
    header = result.stderr
    video_line = video_stream_line(header)
    if video_line is None:
        if "Input #0" in header:
            raise BadInput(f"{path} has no video stream; give a video with pictures in it")
        raise BadInput(f"could not read {path} as a video ({last_ffmpeg_message(header)}); "
                       f"check that the file is a complete, playable video")

    size_match = re.search(r" (\d+)x(\d+)[,\s]", video_line)
    if size_match is None:
        raise BadInput(f"could not find the picture size of {path}; convert it to an ordinary mp4 and retry")
    width, height = int(size_match.group(1)), int(size_match.group(2))
    # ffmpeg turns phone videos filmed upright the right way round when decoding; report that size.
    sar = re.search(r"\[SAR (\d+):(\d+) DAR", video_line)
    pixel_aspect = int(sar.group(1)) / int(sar.group(2)) if sar and int(sar.group(1)) and int(sar.group(2)) else 1.0
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", header)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width
        pixel_aspect = 1 / pixel_aspect

    fps = _parse_rate(video_line, "fps") or _parse_rate(video_line, "tbr") or DEFAULT_FPS
    fps = _exact_frame_rate(fps)

    duration = None
    duration_match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
    if duration_match:
        hours, minutes, seconds = duration_match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)

    num_frames, cut_off = count_video_packets(path)
    announced_frames = num_frames
    if duration and (num_frames is None or cut_off):
        # The header's duration is the container's, which may be the sound's; it is only the video's word
        # on its length when nothing better is known, or when the file ends before its packets do.
        announced_frames = round(duration * fps)
        num_frames = announced_frames if num_frames is None else num_frames
    if num_frames == 0:
        raise BadInput(f"{path} has no video frames; give a video with pictures in it")
    if num_frames is not None:
        # The container's duration covers its longest stream, often the sound; we want the pictures'.
        duration = num_frames / fps

    has_audio = re.search(r"Stream #\S+.*: Audio:", header) is not None
    return VideoInfo(path=path, fps=fps, num_frames=num_frames, size=(height, width),
                     has_audio=has_audio, duration=duration, announced_frames=announced_frames,
                     pixel_aspect=pixel_aspect)


def video_stream_line(header) -> Optional[str]:
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


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

class VideoReader:
    """Frames of a video file, an animated GIF or a directory of images, read lazily.

    The attributes path, fps, size (height, width), num_frames, has_audio, duration and pixel_aspect come
    from probe().
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
        self.announced_frames = info.announced_frames or info.num_frames
        self.pixel_aspect = info.pixel_aspect
        self.frames_decoded = 0
        self._latest_range = (0, None)

    def __repr__(self):
        return (f"VideoReader({self.path!r}, fps={self.fps:.3f}, size={self.size}, "
                f"num_frames={self.num_frames}, has_audio={self.has_audio})")

    def shortfall(self) -> Optional[str]:
        """After reading the frames of the latest frames() call: a warning, without the "warning:" prefix,
        when the video gave fewer of them than its header announces (a cut-off file); None otherwise."""
        start, stop = self._latest_range
        if not self.announced_frames or start >= self.announced_frames:
            return None
        expected = min(stop, self.announced_frames) if stop is not None else self.announced_frames
        if self.frames_decoded >= expected - start:
            return None
        return (f"{self.path} ended after {start + self.frames_decoded} frames, but its header announces "
                f"{self.announced_frames}: the file is probably cut off (an incomplete download or copy)")

    def frames(self, start=0, stop=None) -> Iterator[np.ndarray]:
        """uint8 HxWx3 RGB frames number start, start+1, ... up to (not including) stop.

        Decoding runs in a background thread a few frames ahead. Each call starts from the beginning of
        the file again; frames before `start` are decoded and skipped, which keeps frame numbers exact.
        """
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad frame range: start={start}, stop={stop}")
        self._latest_range = (start, stop)
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
                           f"({first_line(error)}); the file may be damaged or truncated") from None
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
                    yield to_uint8_rgb(pixels)
        except (OSError, EOFError, ValueError) as error:
            raise BadInput(f"could not decode {self.path} after {self.frames_decoded + start} frames "
                           f"({first_line(error)}); the GIF may be damaged or truncated") from None

    def _decode_directory(self, start, stop):
        for file in frame_files(self.path)[start:stop]:
            check_image_path(file)
            frame = to_uint8_rgb(decode_image(file))
            if frame.shape[:2] != self.size:
                raise BadInput(f"{file} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                               f"{self.size[1]}x{self.size[0]}; all frames in a directory must have one size")
            self.frames_decoded += 1
            yield frame


