"""Animate a photo from a camera in real time: `fom live`.

  fom live face.png --camera 0 --window               a window; keys: c new initial pose, s side by side, q quit
  fom live face.png --camera 0 --virtual-camera       a webcam that video-call apps can pick (pip install
                                                      'fom[live]', and v4l2loopback on Linux, OBS elsewhere)
  fom live face.png --driving talk.mp4 -o rec.mp4     a file played at its own frame rate, recorded
  fom live face.png --driving rtsp://host/stream      any stream ffmpeg reads

The newest driving frame is always the one animated: frames the networks are too slow for are dropped,
never queued, so the delay from camera to screen stays bounded. The first frame (or `c` in the window)
sets the pose the motion is measured from. A recording keeps the driving clock: a frame animated late
fills the time of the frames dropped before it. A status line shows frames/s, latency (capture to output,
p50 and p95) and drops; `--json` prints them at the end. Ctrl-C ends the session with the recording
finished.
"""

import collections
import contextlib
import json
import logging
import sys
import time

import numpy as np

from fom_cli.commands import animation_options, load_requested_model
from fom_cli.drawing import side_by_side
from fom_cli.engine import Animation, check_source, synthetic_media
from fom_cli.errors import BadInput, FomError
from fom_cli.media.credentials import ContentCredentials, check_signable
from fom_cli.media.images import read_image, to_uint8
from fom_cli.media.live_in import LiveFrames
from fom_cli.media.video_out import VideoWriter, check_video_output
from fom_cli.options import (ANIMATION_MODES, FITS, add_backend, add_checkpoint, add_config, add_device,
                             add_face_options, add_mark_options, add_precision, add_quiet)

log = logging.getLogger("fom_cli")
# Latencies kept for the percentiles: the last minutes of a session, bounded memory.
LATENCY_WINDOW = 10_000
# How long the session runs before fom says what speed to expect.
WARM_UP_SECONDS = 1.0


def configure_parser(parser):
    parser.add_argument("source", help="the image to animate")
    driving = parser.add_mutually_exclusive_group(required=True)
    driving.add_argument("--camera", metavar="N", help="a camera: its index (0) or device path (/dev/video2)")
    driving.add_argument("--driving", metavar="URL_OR_FILE", help="a stream or a video file ffmpeg reads")
    parser.add_argument("--no-realtime", action="store_true",
                        help="read a --driving file as fast as it decodes (default: at its own frame rate)")
    parser.add_argument("-o", "--output", help="also record the animation to this video file")
    parser.add_argument("--window", action="store_true", help="show the animation in a window")
    parser.add_argument("--virtual-camera", action="store_true",
                        help="send the animation to a virtual webcam (pyvirtualcam: pip install 'fom[live]')")
    parser.add_argument("--json", action="store_true", help="print the session's statistics as one JSON object")
    add_checkpoint(parser)
    add_config(parser)
    parser.add_argument("--align-corners", choices=("true", "false"), default=None,
                        help="grid_sample convention (default: the config's)")
    parser.add_argument("--mode", choices=ANIMATION_MODES, default="relative", help="as fom animate's (default relative)")
    parser.add_argument("--fit", choices=FITS, default="crop", help="as fom animate's (default crop)")
    add_device(parser)
    add_precision(parser)
    add_backend(parser)
    add_mark_options(parser)
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (GPUs)")
    add_quiet(parser, "no status line or notes")
    add_face_options(parser)


class Statistics:
    """Frames, drops and latency (capture to output) of a live session."""

    def __init__(self):
        self.started = time.monotonic()
        self.animated = 0
        self.latencies = collections.deque(maxlen=LATENCY_WINDOW)

    def add(self, captured):
        self.animated += 1
        self.latencies.append(time.monotonic() - captured)

    def report(self, frames):
        seconds = time.monotonic() - self.started
        latencies = np.array(self.latencies) if self.latencies else np.zeros(1)
        return {"frames_captured": frames.captured, "frames_animated": self.animated, "frames_dropped":
                frames.dropped, "seconds": seconds, "fps": self.animated / seconds if seconds else 0.0,
                "driving_fps": frames.fps, "latency_p50_ms": 1000 * float(np.percentile(latencies, 50)),
                "latency_p95_ms": 1000 * float(np.percentile(latencies, 95))}

    def status(self, frames):
        report = self.report(frames)
        return (f"\r{report['fps']:5.1f} frames/s  latency {report['latency_p50_ms']:4.0f} ms (p95 "
                f"{report['latency_p95_ms']:4.0f})  dropped {report['frames_dropped']}/{report['frames_captured']}")


class Window:
    """The animation in a Tk window (tkinter ships with Python). Keys pressed are collected for the loop."""

    def __init__(self, title):
        import tkinter

        try:
            self.root = tkinter.Tk()
        except tkinter.TclError as error:
            raise FomError(f"--window needs a display ({error}); run on a desktop, under Xvfb, or without --window")
        self.root.title(title)
        self.label = tkinter.Label(self.root)
        self.label.pack()
        self.keys = []
        self.root.bind("<Key>", lambda event: self.keys.append(event.keysym.lower()))
        self.root.protocol("WM_DELETE_WINDOW", lambda: self.keys.append("q"))
        self._image = None

    def show(self, frame):
        import tkinter

        height, width = frame.shape[:2]
        self._image = tkinter.PhotoImage(data=b"P6 %d %d 255\n" % (width, height) + frame.tobytes(), format="PPM")
        self.label.configure(image=self._image)
        self.root.update()

    def close(self):
        self.root.destroy()


def import_pyvirtualcam():
    try:
        import pyvirtualcam
    except ImportError:
        raise FomError("--virtual-camera needs pyvirtualcam: pip install 'fom[live]' (and on Linux the "
                       "v4l2loopback kernel module: sudo apt install v4l2loopback-dkms; sudo modprobe "
                       "v4l2loopback)") from None
    return pyvirtualcam


class VirtualCamera:
    """A virtual webcam (pyvirtualcam: v4l2loopback on Linux, OBS's virtual camera on Windows and macOS),
    opened with the first frame's size (the model's square, or the whole photo with --paste-back)."""

    def __init__(self, fps):
        self.fps = fps
        self.camera = None

    def show(self, frame):
        if self.camera is None:
            try:
                self.camera = import_pyvirtualcam().Camera(width=frame.shape[1], height=frame.shape[0], fps=self.fps)
            except FomError:
                raise
            except Exception as error:  # no device: pyvirtualcam says which backend it tried
                raise FomError(f"no virtual camera device ({str(error).strip().splitlines()[0]}); on Linux: sudo "
                               "modprobe v4l2loopback; on Windows and macOS: install OBS and start its virtual "
                               "camera once") from None
        self.camera.send(frame)

    def close(self):
        if self.camera is not None:
            self.camera.close()


def run(args):
    source = check_source(args.source)
    if not (args.window or args.virtual_camera or args.output):
        raise BadInput("fom live needs an output: --window, --virtual-camera and/or -o FILE")
    if args.output:
        check_video_output(args.output)
        if args.sign:
            check_signable(args.output)
    if args.virtual_camera:
        import_pyvirtualcam()  # before the model loads; the device is opened with the frame size, below
    options = animation_options(args, batch_size=1, audio=False)
    model = load_requested_model(args)
    frames = LiveFrames(camera=args.camera, driving=args.driving, realtime=not args.no_realtime)
    window = camera = writer = None
    try:
        animation = Animation(model.networks, model.precision, read_image(source), frames, options,
                              source_name=str(source))
        if args.window:
            window = Window(f"fom live: {source.name}")
        if args.virtual_camera:
            camera = VirtualCamera(frames.fps)
        if args.output:
            mark = synthetic_media(model.networks, source) if options.mark else None
            credentials = ContentCredentials(*options.sign, mark, [source]) if options.sign else None
            writer = VideoWriter(args.output, fps=frames.fps, mark=mark, credentials=credentials)
        with writer if writer is not None else contextlib.nullcontext():
            statistics = live_loop(animation, frames, window, camera, writer, args)
    finally:
        frames.close()
        for sink in (window, camera):
            if sink is not None:
                sink.close()
    if not args.quiet:
        print(statistics.status(frames).lstrip("\r"), file=sys.stderr)
    if args.json:
        print(json.dumps(statistics.report(frames)))
    return 0


def live_loop(animation, frames, window, camera, writer, args):
    """Animate until the input ends, `q` or Ctrl-C; returns the session's Statistics. Ctrl-C is caught here,
    inside the recording's `with`, so that the recording is finished rather than thrown away."""
    statistics, side_by_side_shown, last_number, estimated = Statistics(), False, -1, False
    animator = animation.faces[0].animator
    try:
        for output in animation:
            current = frames.current
            statistics.add(current.captured)
            picture = to_uint8(output)
            if writer is not None:
                # The driving clock: this frame also stands for the frames dropped since the last one.
                for _ in range(current.number - last_number):
                    writer.write(picture)
            last_number = current.number
            if camera is not None:
                camera.show(picture)
            if window is not None:
                driving = animation.last_driving
                # Side by side shows the model's squares; a face pasted back into its photo is shown as it is.
                panels = side_by_side_shown and output.shape[:2] == driving.shape[:2]
                window.show(to_uint8(side_by_side(animation.faces[0].square, driving, output,
                                                  animator.last_keypoints)) if panels else picture)
                keys, window.keys = window.keys, []
                if "q" in keys or "escape" in keys:
                    break
                if "c" in keys:  # this driving frame now matches the source's pose
                    animator.set_initial_frame(driving)
                if "s" in keys:
                    side_by_side_shown = not side_by_side_shown
            if not estimated and time.monotonic() - statistics.started >= WARM_UP_SECONDS:
                estimated = True
                note_expected_speed(statistics.report(frames))
            if not args.quiet and sys.stderr.isatty() and statistics.animated % 5 == 0:
                print(statistics.status(frames), end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the session
    return statistics


def note_expected_speed(report):
    """After the warm-up: the frames/s this machine keeps up, and what to try when it is too few."""
    fps, driving_fps = report["fps"], report["driving_fps"]
    if fps >= 0.8 * driving_fps:
        log.info(f"animating {fps:.1f} frames/s of the driving {driving_fps:g}")
    else:
        log.info(f"this machine animates {fps:.1f} of the driving {driving_fps:g} frames/s: the rest are dropped; "
                 "try --precision bf16 on a CPU that has it, a GPU (--device cuda), or a smaller model")
