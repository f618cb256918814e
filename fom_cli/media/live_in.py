"""Driving frames in real time: a camera, a stream, or a file played at its own frame rate.

A background thread reads frames from ffmpeg as they come and keeps only the newest one. The consumer
(`LiveFrames.frames`) always gets the newest frame it has not seen; frames it was too slow for are
dropped, never queued, so that latency stays bounded however slow the networks are. Each frame carries
its capture time and its number, so that a recording can keep the driving clock (a frame animated late
fills the time of the frames dropped before it).
"""

import dataclasses
import os
import sys
import threading
import time
from typing import Optional

import imageio_ffmpeg
import numpy as np

from fom_cli.errors import BadInput, first_line
from fom_cli.media.video_in import probe


@dataclasses.dataclass
class LiveFrame:
    pixels: np.ndarray     # uint8 (H, W, 3)
    number: int            # 0, 1, 2, ... in capture order, dropped ones included
    captured: float        # time.monotonic() when it arrived


def camera_input(camera):
    """(ffmpeg input options, the name ffmpeg opens) for --camera N or a device path, per platform."""
    if sys.platform.startswith("linux"):
        device = camera if not str(camera).isdigit() else f"/dev/video{camera}"
        if not os.path.exists(device):
            raise BadInput(f"no camera at {device} (`ls /dev/video*` lists the cameras this machine has)")
        return ["-f", "v4l2"], device
    if sys.platform == "darwin":
        return ["-f", "avfoundation", "-framerate", "30"], f"{camera}:none"
    if sys.platform == "win32":
        if str(camera).isdigit():
            raise BadInput("on Windows give the camera's name: --camera \"Integrated Camera\" (ffmpeg -list_devices "
                           "true -f dshow -i dummy lists them)")
        return ["-f", "dshow"], f"video={camera}"
    raise BadInput(f"fom live cannot open cameras on {sys.platform}; give --driving a stream URL or a file")


class LiveFrames:
    """The newest frame of a camera, stream or file, read by ffmpeg in a background thread.

    `realtime`: play a file at its own frame rate (ffmpeg's -re), as a camera would deliver it; without it
    a file is read as fast as ffmpeg decodes it (frames the consumer is too slow for are still dropped).
    """

    path = None  # the engine's name for a driving source's file (none: frames from a device)
    has_audio = False
    num_frames = None
    live = True

    def __init__(self, camera=None, driving=None, realtime=True):
        if (camera is None) == (driving is None):
            raise BadInput("fom live needs one of --camera N and --driving URL_OR_FILE")
        if camera is not None:
            input_params, self.name = camera_input(camera)
            self.fps = 30.0
        else:
            self.name = str(driving)
            # -re plays a file at its own rate; with no initial burst (ffmpeg 6.1+ sends 0.5 s at once by
            # default), as a camera would.
            input_params = ["-re", "-readrate_initial_burst", "0"] if realtime else []
            self.fps = 25.0
            if os.path.exists(self.name):
                info = probe(self.name)  # a file: its frame rate, and a clear line when it is no video
                self.fps = info.fps or self.fps
                self.path = self.name
        self._reader = imageio_ffmpeg.read_frames(self.name, input_params=input_params,
                                                  output_params=["-map", "0:V:0", "-fps_mode", "passthrough"])
        try:
            meta = next(self._reader)
        except (OSError, RuntimeError, StopIteration) as error:
            raise BadInput(f"cannot open {self.name} ({first_line(error)}); is it in use by another program?") \
                from None
        self.size = tuple(meta["size"][::-1])  # (height, width)
        self.fps = float(meta.get("fps") or self.fps)
        self.captured = 0       # frames that arrived
        self.dropped = 0        # frames replaced by a newer one before the consumer took them
        self.ended = False
        self.current: Optional[LiveFrame] = None
        self._newest: Optional[LiveFrame] = None
        self._error = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name="fom-live-capture", daemon=True)
        self._thread.start()

    def _capture(self):
        height, width = self.size
        try:
            for raw in self._reader:
                if self._stop.is_set():
                    break
                frame = LiveFrame(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy(),
                                  self.captured, time.monotonic())
                with self._changed:
                    if self._newest is not None:
                        self.dropped += 1   # the consumer never took the one before: it is stale now
                    self._newest = frame
                    self.captured += 1
                    self._changed.notify_all()
        except Exception as error:  # a camera unplugged, a stream cut: the consumer says so
            self._error = error
        finally:
            self._reader.close()  # stops ffmpeg (a generator is closed by the thread that runs it)
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def next_frame(self, timeout=10.0) -> Optional[LiveFrame]:
        """The newest frame not handed out yet (waiting for one), or None at the end of the input."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._newest is not None or self.ended, timeout=timeout):
                raise BadInput(f"{self.name} sent no frame for {timeout:g} s")
            frame, self._newest = self._newest, None
        if frame is None and self._error is not None:
            raise BadInput(f"reading {self.name} failed ({first_line(self._error)})")
        return frame

    def frames(self, start=0, stop=None):
        """The engine's driving-source interface: pixels of the newest frames, as they come. `current` is the
        LiveFrame last handed out (the engine animates it before asking for the next)."""
        while (frame := self.next_frame()) is not None:
            self.current = frame
            yield frame.pixels

    def shortfall(self):
        return None

    def close(self):
        """Stop reading: the capture thread ends at the next frame (a camera's next frame is a few ms away)."""
        self._stop.set()
        self._thread.join(timeout=5)
