"""Faces in a larger photo animated by the face of a larger video: `fom animate --crop-source`,
`--all-faces`, `--crop-driving`, `--paste-back` and their preset `--face`.

FOMM only works on inputs framed like its training data, a face filling a square. This module cuts such
squares out of raw inputs and puts the results back:

- the source photo (bounded by --max-size) is searched for faces once; each face's square window
  (compositing.square_window, with `fom crop`'s margin --increase) is cut out and gets its own Animator,
  whose source side (keypoints, encoder features) is computed once;
- with --crop-driving, the driving video streams through a DrivingFollower (face_tracks.py): the face is
  detected every few frames, followed, smoothed over time with a bounded look-ahead, and its square cut
  out of every frame. The same driving squares feed every Animator;
- with --paste-back, every animated square is resized back into its window and blended into the photo by
  a feathered mask: the output has the photo's size and, outside the windows, the photo's exact pixels.

Memory stays flat in the video's length: frames are decoded, followed, animated and encoded as a stream.
"""

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fom_cli.animation import Animator, animator_class, default_batch_size
from fom_cli.compositing import cut, feathered_mask, paste_back, square_window
from fom_cli.config import frame_size
from fom_cli.errors import BadInput
from fom_cli.face_tracks import DrivingFollower
from fom_cli.faces import landmark_model, make_detector
from fom_cli.media.images import fit_frame, read_image, resize_uint8, to_uint8
from fom_cli.media.video_in import VideoReader, prefetch
from fom_cli.media.video_out import VideoWriter, is_frames_folder
# pipeline imports this module only inside animate_pair, so importing it here makes no cycle at load time.
from fom_cli.pipeline import (batched, exact_rate, find_best_frame, frame_at, frame_range, resampled,
                              side_by_side)
from fom_cli.progress import progress_bar

# The longer side of a pasted-back output unless --max-size says otherwise: 1080p's, enough for any
# screen, and it keeps a 50-megapixel phone photo from making every frame a 150 MB copy.
DEFAULT_MAX_SIZE = 1920

# Photos are single detections, so the detector looks at a larger copy than for video frames (as
# `fom crop` does for photos): this many times its usual limit on the working copy's longer side.
PHOTO_DETAIL = 2

# The options that switch face cropping on; with none of them `fom animate` fits whole frames as before.
FACE_OPTIONS = ("face", "crop_source", "all_faces", "crop_driving", "paste_back")


def uses_faces(args):
    return any(getattr(args, name, False) for name in FACE_OPTIONS)


@dataclass
class FaceSettings:
    """What the face options ask for, with the preset expanded and the implied options filled in."""

    crop_source: bool
    all_faces: bool
    crop_driving: bool
    paste_back: bool
    max_size: int
    increase: float
    detector: str
    detector_weights: str = None


def face_settings(args):
    """FaceSettings from a namespace of `fom animate`'s options (or a `fom batch` job's); BadInput for a
    combination that cannot work."""
    face = getattr(args, "face", False)
    all_faces = getattr(args, "all_faces", False)
    paste = face or getattr(args, "paste_back", False)
    if all_faces and not paste:
        raise BadInput("--all-faces animates every face in the photo, which only shows pasted back into it: "
                       "add --paste-back (or use --face)")
    if getattr(args, "find_best_frame", False) and (face or getattr(args, "crop_driving", False)):
        raise BadInput("--find-best-frame does not work with --crop-driving (or --face) yet; pick the frame "
                       "yourself with --best-frame N")
    return FaceSettings(
        # A face pasted back needs a window in the photo, and so a face found there.
        crop_source=face or all_faces or paste or getattr(args, "crop_source", False),
        all_faces=all_faces,
        crop_driving=face or getattr(args, "crop_driving", False),
        paste_back=paste,
        max_size=getattr(args, "max_size", None) or DEFAULT_MAX_SIZE,
        increase=getattr(args, "increase", 0.1),
        detector=getattr(args, "detector", "dlib"),
        detector_weights=getattr(args, "detector_weights", None))


def bounded_photo(image, max_size):
    """The photo as uint8, shrunk so its longer side is at most max_size (never enlarged)."""
    height, width = image.shape[:2]
    scale = max_size / max(height, width)
    if scale < 1:
        return resize_uint8(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    return to_uint8(image)


@dataclass
class SourceFace:
    """One face of the source photo: its window in the photo, the square the model sees, its Animator."""

    window: object
    square: np.ndarray  # float32 model-size square
    animator: Animator = None
    mask: np.ndarray = field(default=None, repr=False)


def find_source_faces(photo, detector, settings, size, source_path):
    """The faces to animate, most prominent first: all of them with --all-faces, else the most prominent."""
    found = detector.detect(photo, max_side=PHOTO_DETAIL * detector.max_side)
    if not found:
        raise BadInput(f"no face found in the source image {source_path}; animate it without --crop-source/"
                       f"--paste-back/--face, or crop it yourself")
    chosen = found if settings.all_faces else found[:1]
    height, width = photo.shape[:2]
    faces = []
    for face in chosen:
        window = square_window(face.box, settings.increase, height, width)
        faces.append(SourceFace(window=window, square=cut(photo, window, size).astype(np.float32) / 255))
    return faces


class Timer:
    """Seconds spent in the face work (following, cutting, pasting), for `fom bench animate --paste-back`."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start


def animate_faces(model, source_path, driving_path, output, args):
    """`fom animate` with face cropping: see the module's docstring. Returns the output path; the time the
    face work took is left in args.face_seconds (bench reads it)."""
    settings = face_settings(args)
    config, kp_detector, generator = model
    size = frame_size(config)[0]
    reader = VideoReader(driving_path)
    first, stop = frame_range(reader, args.start, args.duration)
    detector = make_detector(settings.detector, weights=settings.detector_weights, device=args.device)
    compositing, networks = Timer(), Timer()

    image = read_image(source_path)
    if settings.crop_source:
        photo = bounded_photo(image, settings.max_size)
        faces = find_source_faces(photo, detector, settings, size, source_path)
    else:
        photo = None
        faces = [SourceFace(window=None, square=fit_frame(image, (size, size), args.fit))]

    follower = None
    if settings.crop_driving:
        follower = DrivingFollower(reader, detector, settings.increase, size)
        follower.find_face(first, stop)  # a driving video without a face stops here, before anything is written

    def driving_frames(start, end):
        """The model-size driving squares of frames start to end."""
        if follower is not None:
            return (crop for crop, _window in follower.crops(start, end))
        return (fit_frame(frame, (size, size), args.fit) for frame in reader.frames(start, end))

    for face in faces:
        face.animator = animator_class(generator)(kp_detector, generator, face.square, mode=args.mode,
                                                  adapt_scale=args.adapt_scale, precision=args.precision)
        if settings.paste_back:
            face.mask = feathered_mask(face.window.side)
    batch_size = args.batch_size or default_batch_size(faces[0].animator.device)

    if args.best_frame is not None:
        if args.best_frame < 0 or (stop is not None and args.best_frame >= stop - first):
            raise BadInput(f"--best-frame {args.best_frame} is outside {driving_path} "
                           f"(frames 0 to {(stop - first if stop is not None else 1) - 1})")
        initial = next(iter(driving_frames(first + args.best_frame, first + args.best_frame + 1)), None)
        if initial is None:
            raise BadInput(f"{driving_path} has no frame {args.best_frame}")
        for face in faces:
            face.animator.set_initial_frame(initial)
    elif args.find_best_frame:
        # Whole driving frames (face_settings refuses it with --crop-driving): each face's own best match.
        landmarks = landmark_model(device=str(faces[0].animator.device))
        for number, face in enumerate(faces):
            best = find_best_frame(face.animator, reader, face.square, (size, size), args.fit, batch_size,
                                   args.quiet, landmarks, first, stop)
            face.animator.set_initial_frame(frame_at(reader, first + best, (size, size), args.fit))
            if not args.quiet:
                which = f" for face {number + 1}" if len(faces) > 1 else ""
                print(f"best frame{which}: {best}", file=sys.stderr)

    fps = args.fps or reader.fps
    # Another --fps keeps the driving video's duration, as for whole frames (pipeline.resampled).
    ratio = exact_rate(fps) / exact_rate(reader.fps)
    audio = None if args.no_audio else driving_path
    if audio is not None and reader.has_audio and is_frames_folder(output) and not args.quiet:
        print(f"note: PNG frames carry no sound: the sound of {driving_path} is not written (write a video "
              f"file to keep it; --no-audio silences this note)", file=sys.stderr)
    # The follower runs in a background thread, a few squares ahead of the networks.
    frames = prefetch(resampled(driving_frames(first, stop), ratio))
    total = None if stop is None else math.ceil((stop - first) * ratio)
    with VideoWriter(output, fps, audio_from=audio, audio_start=first / reader.fps,
                     overwrite=getattr(args, "overwrite", False)) as writer, \
            progress_bar(total=total, unit="frame", desc=Path(output).name, disable=args.quiet) as progress:
        for batch in batched(frames, batch_size):
            driving = np.stack([frame for frame, _ in batch])
            with networks:
                # Every face follows the same driving frames: their keypoints are found once.
                kp_driving = faces[0].animator.keypoints(driving) if len(faces) > 1 else None
                predictions = [face.animator.animate(driving, kp_driving) for face in faces]
            for i, (_, repeats) in enumerate(batch):
                with compositing:
                    frame = output_frame(faces, predictions, i, driving[i], photo if settings.paste_back else None,
                                         args.side_by_side)
                for _ in range(repeats):
                    writer.write(frame)
                progress.update(repeats)
    shortfall = reader.shortfall()
    if shortfall:
        print(f"fom: warning: {shortfall}; {output} has {writer.frames_written} frames", file=sys.stderr)
    args.face_seconds = {"compositing": compositing.seconds, "networks": networks.seconds,
                         "driving_crop": follower.seconds if follower is not None else 0.0}
    return output


def output_frame(faces, predictions, i, driving, photo, show_panels):
    """Frame i of the output: every face's prediction pasted back into the photo (when one is given), or
    the first face's prediction alone; with show_panels (--side-by-side) the model's view below it."""
    frame = None
    if photo is not None:
        frame = photo.copy()
        for face, prediction in zip(faces, predictions):
            paste_back(photo, prediction[i], face.window, face.mask, out=frame)
    if show_panels:
        return panels(faces, driving, predictions, i, frame, side_by_side)
    return frame if frame is not None else predictions[0][i]


def panels(faces, driving, predictions, i, pasted, side_by_side):
    """--side-by-side: a row per face of what the model saw and made (source square | driving square |
    result, keypoints drawn); with --paste-back the rows sit under the pasted frame, scaled to its width."""
    rows = []
    for face, prediction in zip(faces, predictions):
        keypoints = {"source": face.animator.last_keypoints["source"],
                     "driving": face.animator.last_keypoints["driving"][i],
                     "moved": face.animator.last_keypoints["moved"][i]}
        rows.append(to_uint8(side_by_side(face.square, driving, prediction[i], keypoints)))
    strip = np.concatenate(rows, axis=0)
    if pasted is None:
        return strip
    width = pasted.shape[1]
    strip = resize_uint8(strip, (max(1, round(strip.shape[0] * width / strip.shape[1])), width))
    return np.concatenate([pasted, strip], axis=0)
