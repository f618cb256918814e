"""The one animation engine: `fom animate`, `fom batch`, `fom bench` and the Python API all run this loop.

    driving frames ─▶ [follow the face] ─▶ animator per source face ─▶ [paste back, panels] ─▶ sink
    (a video file, a     (--crop-driving)    (FOMM or TPSMM: the source   (--paste-back,         (a video with
     frames folder,                           side once, driving frames    --side-by-side)        sound, a GIF,
     arrays, iterators)                       in batches)                                         PNG frames, a list)

What every combination shares lives here once: --start/--duration select driving frames by time, --fps
repeats or drops them so the duration (and the sound) stay, the best frame (given or found) is where
motion is measured from, progress, and the warning for a cut-off video. Whole frames are the case of one
"face" whose window is the whole fitted frame. AnimationOptions refuses a combination that cannot work
when it is made, before any model loads, whichever front end made it.

Memory stays flat in the video's length: frames are decoded, followed, animated and written as a stream.
"""

import itertools
import logging
import math
import os
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from fom_cli.animation import pose_distance
from fom_cli.config import frame_size
from fom_cli.errors import BadInput, BadOutput
from fom_cli.face_animation import (DEFAULT_MAX_SIZE, SourceFace, Timer, bounded_photo, find_source_faces,
                                    output_frame)
from fom_cli.face_tracks import DrivingFollower
from fom_cli.faces import landmark_model, make_detector
from fom_cli.families import check_animation_mode
from fom_cli.media.credentials import ContentCredentials, check_signable
from fom_cli.media.files import check_parent_writable, same_path
from fom_cli.media.images import (IMAGE_EXTENSIONS, aspect_ratio_differs, check_image_array, fit_frame, read_image,
                                  to_uint8)
from fom_cli.media.marks import SyntheticMedia, VisibleMark
from fom_cli.media.video_in import VIDEO_EXTENSIONS, VideoReader, prefetch
from fom_cli.media.video_out import VideoWriter, check_video_output, is_frames_folder
from fom_cli.options import ANIMATION_MODES, DETECTORS, FITS, MAX_FPS, MIN_FPS
from fom_cli.progress import progress_bar
from fom_cli.runtime import default_batch_size

# Notes ("fits it to the model's frame") go to logging.INFO, warnings (a cut-off video) to WARNING: the CLI
# prints them on stderr; a program using the API sees them only if it asks (logging's default shows
# warnings alone).
log = logging.getLogger("fom_cli")


@dataclass
class AnimationOptions:
    """How one source is animated by one driving video: every option of `fom animate` but the model's.

    mode            relative (the driving motion since the start frame, applied to the source's keypoints),
                    absolute (the driving keypoints as they are), avd (TPSMM's AVD network)
    adapt_scale     scale relative motion by the size ratio of the two keypoint clouds
    best_frame      the driving frame (counted from the first one used) whose pose matches the source's
    find_best_frame find that frame (face landmarks when face-alignment's model is cached, else keypoints)
    fit             crop, pad or stretch frames of another aspect ratio to the model's
    start, duration the driving video from `start` seconds on, for `duration` seconds (None: to its end)
    fps             output frame rate (None: the driving video's); the duration is kept
    audio           copy the driving video's sound (where the output can carry it)
    side_by_side    source | driving | result panels with keypoints drawn
    overwrite       replace the PNG frames an earlier run wrote in a frames folder
    batch_size      driving frames per forward pass (None: 8 on CPU, 32 on CUDA)
    face            the preset for real photos and phone videos: crop_source, crop_driving and paste_back
    crop_source     animate the square around the photo's most prominent face
    all_faces       every face of the photo (needs paste_back)
    crop_driving    follow the driving video's face and feed the model its square
    paste_back      put every animated face back into the photo (implies crop_source)
    max_size        with paste_back: the photo's longer side at most this (never enlarged)
    increase        margin around a face box, as a fraction of its size
    detector        dlib, sfd or auto; detector_weights: S3FD's file
    mark            say in the output file's metadata that it is synthetic (media/marks.py)
    sign            (key, certificate chain) PEM paths: embed signed C2PA content credentials (media/credentials.py)
    visible_mark    a label for a corner of every frame (None: none)
    """

    mode: str = "relative"
    adapt_scale: bool = True
    best_frame: Optional[int] = None
    find_best_frame: bool = False
    fit: str = "crop"
    start: float = 0.0
    duration: Optional[float] = None
    fps: Optional[float] = None
    audio: bool = True
    side_by_side: bool = False
    overwrite: bool = False
    batch_size: Optional[int] = None
    face: bool = False
    crop_source: bool = False
    all_faces: bool = False
    crop_driving: bool = False
    paste_back: bool = False
    max_size: int = DEFAULT_MAX_SIZE
    increase: float = 0.1
    detector: str = "dlib"
    detector_weights: Optional[str] = None
    mark: bool = True
    visible_mark: Optional[str] = None
    sign: Optional[tuple] = None

    def __post_init__(self):
        # The preset and what options imply: a face pasted back needs a window in the photo, and so a face
        # found there.
        if self.face:
            self.crop_source = self.crop_driving = self.paste_back = True
        if self.paste_back:
            self.crop_source = True
        self.check()

    def check(self):
        """BadInput (one line) for a value or a combination that cannot work."""
        for name, allowed in (("mode", ANIMATION_MODES), ("fit", FITS), ("detector", DETECTORS)):
            if getattr(self, name) not in allowed:
                raise BadInput(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.best_frame is not None and self.best_frame < 0:
            raise BadInput(f"best frame must be 0 or more, not {self.best_frame}")
        if self.best_frame is not None and self.find_best_frame:
            raise BadInput("--best-frame and --find-best-frame exclude each other: give one")
        if not self.start >= 0 or math.isinf(self.start):
            raise BadInput(f"start must be a number of seconds from 0, not {self.start}")
        if self.duration is not None and (not self.duration > 0 or math.isinf(self.duration)):
            raise BadInput(f"duration must be a positive number of seconds, not {self.duration}")
        if self.fps is not None and not MIN_FPS <= self.fps <= MAX_FPS:
            raise BadInput(f"fps must be from {MIN_FPS} to {MAX_FPS}, not {self.fps}")
        for name in ("batch_size", "max_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BadInput(f"{name} must be a positive whole number, not {value!r}")
        if not self.increase >= 0:
            raise BadInput(f"increase must be 0 or more, not {self.increase}")
        if self.all_faces and not self.paste_back:
            raise BadInput("--all-faces animates every face in the photo, which only shows pasted back into it: "
                           "add --paste-back (or use --face)")
        if self.sign is not None:
            if len(self.sign) != 2:
                raise BadInput("sign takes two paths: the private key and the certificate chain (PEM)")
            if not self.mark:
                raise BadInput("--sign writes content credentials that say the output is synthetic: it does not go "
                               "with --no-mark")
            for path in self.sign:
                if not Path(path).is_file():
                    raise BadInput(f"--sign: {path} is not a file")
        if self.visible_mark is not None and not str(self.visible_mark).strip():
            raise BadInput("--visible-mark needs some text (or none after it, for the default label)")
        if self.find_best_frame and self.crop_driving:
            raise BadInput("--find-best-frame does not work with --crop-driving (or --face) yet; pick the frame "
                           "yourself with --best-frame N")

    @property
    def uses_faces(self):
        return self.crop_source or self.crop_driving

    @classmethod
    def names(cls):
        return [field.name for field in fields(cls)]


# --- driving frames --------------------------------------------------------------------------------------

class FramesInMemory:
    """Driving frames held in memory (uint8 or float [0, 1], (N, H, W, 3)), with VideoReader's interface."""

    path = None
    has_audio = False

    def __init__(self, frames, fps=25.0):
        self._frames = check_image_array(frames, "driving frames")
        if self._frames.ndim != 4 or len(self._frames) == 0:
            raise BadInput("driving frames must be a non-empty (N, H, W, 3) array or list of (H, W, 3) frames")
        self.fps = float(fps)
        self.size = self._frames.shape[1:3]
        self.num_frames = len(self._frames)

    def frames(self, start=0, stop=None):
        return iter(self._frames[start:stop])

    def shortfall(self):
        return None


class FrameStream:
    """Driving frames from any iterator (a camera, a generator), read once: VideoReader's interface for one
    pass from the start. What needs a second pass (a best frame, following a face) is refused."""

    path = None
    has_audio = False
    num_frames = None

    def __init__(self, iterable, fps=25.0):
        self._iterator = iter(iterable)
        self._first = next(self._iterator, None)
        if self._first is None:
            raise BadInput("the driving frames are empty")
        self._first = check_image_array(self._first, "driving frames")
        self.fps = float(fps)
        self.size = self._first.shape[:2]
        self._used = False

    def frames(self, start=0, stop=None):
        if self._used:
            raise BadInput("a stream of driving frames can be read once: a best frame or a followed face needs "
                           "a video file or a list of frames")
        self._used = True
        rest = (check_image_array(frame, "driving frames") for frame in self._iterator)
        frames = itertools.chain([self._first], rest)
        return itertools.islice(frames, start, stop)

    def shortfall(self):
        return None


def driving_source(driving, fps=None):
    """A VideoReader for a path, FramesInMemory for an array or a list, FrameStream for any other iterable."""
    if isinstance(driving, (str, os.PathLike)):
        return VideoReader(check_driving(driving))
    if isinstance(driving, (np.ndarray, list, tuple)):
        return FramesInMemory(np.asarray(driving), fps or 25.0)
    return FrameStream(driving, fps or 25.0)


# --- checks made before any model loads ------------------------------------------------------------------

def check_source(path):
    path = Path(path)
    if not path.exists():
        raise BadInput(f"source image {path} does not exist")
    if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise BadInput(f"source {path} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
    return path


def check_driving(path):
    path = Path(path)
    if not path.exists():
        raise BadInput(f"driving video {path} does not exist")
    if not path.is_dir() and path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise BadInput(f"driving input {path} is not a video ({', '.join(VIDEO_EXTENSIONS)}) "
                       "or a directory of frames")
    return path


def check_outputs(jobs, overwrite=False, job_names=None, signed=False):
    """Refuse, before any model is loaded or frame decoded, every output that cannot be written or would
    destroy data: an output that is the job's own source or driving video, two jobs writing one file, or
    a path check_video_output refuses; with `signed` (--sign), one that cannot hold content credentials.
    jobs: [(source, driving, output)]; job_names: what to call each job in messages ("job 3"), none for
    `fom animate`. A source or driving video given in memory is None."""
    def job(index):
        source, driving, _ = jobs[index]
        pair = f"{source} with {driving}"
        return f"{job_names[index]} ({pair})" if job_names else pair

    writers = {}  # the output's real path -> the index of the first job writing it
    checked_folders = set()
    for index, (source, driving, output) in enumerate(jobs):
        prefix = f"{job_names[index]}: " if job_names else ""
        for role, path in (("source image", source), ("driving video", driving)):
            if path is not None and same_path(output, path):  # None: given in memory
                raise BadOutput(f"{prefix}the output {output} is the {role}: writing it would destroy the input; "
                                f"choose another output path")
        key = os.path.realpath(output)
        if key in writers:
            clashes = sum(1 for other in jobs if os.path.realpath(other[2]) == key)
            raise BadOutput(f"{clashes} jobs would write {output}, each replacing the one before: {job(writers[key])} "
                            f"and {job(index)}{', ...' if clashes > 2 else ''}; give the inputs distinct names or "
                            f"write them in separate runs")
        writers[key] = index
        folder = os.path.dirname(os.path.abspath(output))
        try:
            if signed:
                check_signable(output)
            check_video_output(output, overwrite)
            if folder not in checked_folders:
                check_parent_writable(output)
                checked_folders.add(folder)
        except BadOutput as error:
            raise BadOutput(f"{prefix}{error}") from None


# --- time: which driving frames, shown how often -------------------------------------------------------------

def batched(iterable, size):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def exact_rate(fps) -> Fraction:
    """A frame rate as a fraction, so that 29.97 (30000/1001) against 25 resamples without drift."""
    return Fraction(fps).limit_denominator(1001)


def resampled(frames, ratio):
    """(frame, repeats) for the driving frames an output at `ratio` times their rate shows, each with the
    number of output frames that show it: output frame k shows the driving frame on screen at its time,
    k / output fps. Over n driving frames that makes ceil(n * ratio) output frames, the same duration to
    within one output frame. Frames that no output frame shows are skipped, not animated."""
    for index, frame in enumerate(frames):
        repeats = math.ceil((index + 1) * ratio) - math.ceil(index * ratio)
        if repeats:
            yield frame, repeats


def frame_range(reader, start, duration):
    """(first, stop): the driving frames --start and --duration select, by time as ffmpeg's -ss and -t do:
    frame i shows at i / fps, and those from `start` to before `start + duration` seconds are kept. stop is
    None for "to the end" when the number of frames is unknown."""
    # A millionth of a frame of slack, so that --start 0.4 at 25 fps is frame 10 despite rounding.
    first = max(0, math.ceil(start * reader.fps - 1e-6))
    stop = reader.num_frames
    if duration is not None:
        end = math.ceil((start + duration) * reader.fps - 1e-6)
        stop = end if stop is None else min(stop, end)
    name = reader.path or "the driving frames"
    if reader.num_frames is not None and first >= reader.num_frames:
        raise BadInput(f"--start {start:g} is past the end of {name} ({reader.num_frames / reader.fps:.2f} s)")
    if stop is not None and stop <= first:
        raise BadInput(f"--duration {duration:g} from {start:g} s holds no frame of {name} "
                       f"({reader.fps:g} frames/s); make it longer")
    return first, stop


def find_best_frame(animator, frames, source, batch_size, landmarks=None, total=None, progress=False):
    """Index of the frame among `frames` (model-size) whose pose is closest to the source's (position and
    size normalised): by face landmarks when given, else by the model's own keypoints."""
    if landmarks is not None:
        source_points = landmarks.landmarks(to_uint8(source))
        if source_points is None:
            landmarks = None  # no face in the source: fall back to the model's keypoints
    if landmarks is None:
        source_points = animator.kp_source["value"][0].cpu().numpy()
    best, best_distance, index = 0, float("inf"), 0
    with progress_bar(total=total, unit="frame", desc="finding best frame", disable=not progress) as bar:
        for batch in batched(frames, batch_size):
            if landmarks is not None:
                points = [landmarks.landmarks(to_uint8(frame)) for frame in batch]
            else:
                points = list(animator.keypoints(np.stack(batch))["value"].cpu().numpy())
            for frame_points in points:
                if frame_points is not None:
                    distance = pose_distance(source_points, frame_points)
                    if distance < best_distance:
                        best, best_distance = index, distance
                index += 1
            bar.update(len(batch))
    return best, "face landmarks" if landmarks is not None else "the model's keypoints"


# --- the loop ------------------------------------------------------------------------------------------------

class Animation:
    """One source image animated by one driving source: iterate it for the output frames (uint8, or float
    [0, 1] for whole frames without panels: what the sink takes), in constant memory.

    After the iteration: frames_written, and timings (seconds of the networks, the driving-face
    following and the compositing: `fom bench --paste-back` reads them).
    """

    def __init__(self, networks, precision, source_image, driving, options, progress=False, source_name="source",
                 output_name="frames"):
        check_animation_mode(networks, options.mode)
        self.networks, self.options, self.driving = networks, options, driving
        self.progress, self.output_name = progress, output_name
        self.source_image = check_image_array(source_image, "the source image")
        if self.source_image.ndim != 3:
            raise BadInput(f"the source image must be one (H, W, 3) picture, not {self.source_image.shape}")
        self.fps = options.fps or driving.fps
        self.first, self.stop = frame_range(driving, options.start, options.duration)
        self.timings = {"networks": 0.0, "driving_crop": 0.0, "compositing": 0.0}
        self.frames_written = 0
        self._prepare(precision, source_name)

    def _prepare(self, precision, source_name):
        options, driving = self.options, self.driving
        model_size = frame_size(self.networks.config)
        # A face's square is the model's frame; whole frames are fitted to its (height, width).
        self.size = (model_size[0], model_size[0]) if options.uses_faces else model_size
        detector = None
        if options.uses_faces:
            detector = make_detector(options.detector, weights=options.detector_weights,
                                     device=str(self.networks.device))
        self.photo = None
        if options.crop_source:
            photo = bounded_photo(self.source_image, options.max_size)
            self.faces = find_source_faces(photo, detector, options.all_faces, options.increase, self.size[0],
                                           source_name)
            if options.paste_back:
                self.photo = photo
        else:
            if aspect_ratio_differs(self.source_image.shape[:2], self.size):
                log.info(f"{source_name} is {self.source_image.shape[1]}x{self.source_image.shape[0]}; --fit "
                         f"{options.fit} fits it to the model's {self.size[1]}x{self.size[0]} frame")
            self.faces = [SourceFace(window=None, square=fit_frame(self.source_image, self.size, options.fit))]
        self.follower = None
        if options.crop_driving:
            self.follower = DrivingFollower(driving, detector, options.increase, self.size[0],
                                            causal=getattr(driving, "live", False))
            self.follower.find_face(self.first, self.stop)  # no face: stops here, before anything is written
        elif aspect_ratio_differs(driving.size, self.size):
            log.info(f"{driving.path or 'the driving video'} is {driving.size[1]}x{driving.size[0]}; --fit "
                     f"{options.fit} fits it to the model's {self.size[1]}x{self.size[0]} frame")
        for face in self.faces:
            face.animator = self.networks.animator(face.square, options.mode, options.adapt_scale, precision)
            face.prepare_paste(self.photo is not None)
        self.batch_size = options.batch_size or default_batch_size(self.networks.device)
        self._set_initial_frames()

    def driving_squares(self, start, stop):
        """The model-size driving frames start to stop: the followed face's squares, or whole frames fitted."""
        if self.follower is not None:
            return (crop for crop, _window in self.follower.crops(start, stop))
        return (fit_frame(frame, self.size, self.options.fit) for frame in self.driving.frames(start, stop))

    def _set_initial_frames(self):
        """The driving frame motion is measured from: --best-frame's, each face's best match, or (set by the
        animator itself) the first one used. Frame numbers count from the first frame --start selects."""
        options, first, stop = self.options, self.first, self.stop
        count = None if stop is None else stop - first
        if options.best_frame is not None:
            if count is not None and options.best_frame >= count:
                name = self.driving.path or "the driving frames"
                raise BadInput(f"--best-frame {options.best_frame} is outside {name} (frames 0 to {count - 1})")
            initial = next(iter(self.driving_squares(first + options.best_frame, first + options.best_frame + 1)),
                           None)
            if initial is None:
                raise BadInput(f"{self.driving.path or 'the driving frames'} have no frame {options.best_frame}")
            for face in self.faces:
                face.animator.set_initial_frame(initial)
        elif options.find_best_frame:
            landmarks = landmark_model(device=str(self.networks.device))
            for number, face in enumerate(self.faces):
                frames = prefetch(self.driving_squares(first, stop))
                best, by = find_best_frame(face.animator, frames, face.square, self.batch_size, landmarks, count,
                                           self.progress)
                face.animator.set_initial_frame(next(iter(self.driving_squares(first + best, first + best + 1))))
                which = f" for face {number + 1}" if len(self.faces) > 1 else ""
                log.info(f"best frame{which}: {best} (by {by})")

    def __iter__(self):
        options, faces = self.options, self.faces
        networks, compositing = Timer(), Timer()
        # Another fps keeps the driving video's duration: frames are dropped or repeated, so that the motion
        # plays at its own speed and stays in sync with the sound.
        ratio = exact_rate(self.fps) / exact_rate(self.driving.fps)
        # Decoding (and following the face) runs in a background thread, a few frames ahead of the networks;
        # not for a live source, whose newest frame is taken when the networks are ready (media/live_in.py).
        frames = resampled(self.driving_squares(self.first, self.stop), ratio)
        if not getattr(self.driving, "live", False):
            frames = prefetch(frames)
        total = None if self.stop is None else math.ceil((self.stop - self.first) * ratio)
        with progress_bar(total=total, unit="frame", desc=self.output_name, disable=not self.progress) as bar:
            visible_mark = None   # made with the first frame, whose size it needs
            for batch in batched(frames, self.batch_size):
                driving = np.stack([frame for frame, _ in batch])
                self.last_driving = driving[-1]  # the model-size square (live's side-by-side and new pose)
                with networks:
                    # Every face follows the same driving frames: their keypoints are found once.
                    kp_driving = faces[0].animator.keypoints(driving) if len(faces) > 1 else None
                    predictions = [face.animator.animate(driving, kp_driving) for face in faces]
                for i, (_, repeats) in enumerate(batch):
                    with compositing:
                        frame = output_frame(faces, predictions, i, driving[i], self.photo, options.side_by_side)
                        if options.visible_mark is not None:
                            visible_mark = visible_mark or self._visible_mark(frame.shape[:2])
                            frame = visible_mark.apply(frame)
                    for _ in range(repeats):
                        self.frames_written += 1
                        yield frame
                    bar.update(repeats)
        self.timings.update(networks=networks.seconds, compositing=compositing.seconds,
                            driving_crop=self.follower.seconds if self.follower is not None else 0.0)
        shortfall = self.driving.shortfall()
        if shortfall:  # a warning, shown even with --quiet: the output is shorter than the user will expect
            log.warning(f"{shortfall}; {self.output_name} has {self.frames_written} frames")


    def _visible_mark(self, size):
        """The label of --visible-mark for frames of `size`, away from the faces pasted back."""
        avoid = [face.window.box for face in self.faces if face.window is not None] if self.photo is not None else []
        return VisibleMark(self.options.visible_mark, size, avoid)


def synthetic_media(networks, source):
    """What an output of `networks` animating `source` (a path, or an image in memory) says about itself."""
    from fom_cli import __version__

    source_name = Path(source).name if isinstance(source, (str, os.PathLike)) else None
    return SyntheticMedia(tool=f"fom {__version__}", model=networks.identity(), source_image=source_name)


def animate_file(networks, precision, source, driving, output, options, progress=False):
    """One source image file and one driving video (file, frames folder, or in memory) to one output file
    or frames folder, with the driving video's sound and duration. Returns the finished Animation."""
    mark = synthetic_media(networks, source) if options.mark else None
    credentials = None
    if options.sign is not None:   # a key that cannot sign stops here, before any frame
        credentials = ContentCredentials(*options.sign, mark, ingredients=[
            path if isinstance(path, (str, os.PathLike)) else None for path in (source, getattr(driving, "path", driving))])
    source_image = read_image(check_source(source)) if isinstance(source, (str, os.PathLike)) else source
    driving = driving if hasattr(driving, "frames") else driving_source(driving)
    animation = Animation(networks, precision, source_image, driving, options, progress,
                          source_name=str(source) if isinstance(source, (str, os.PathLike)) else "the source image",
                          output_name=Path(output).name)
    audio = driving.path if options.audio and driving.has_audio else None
    if audio is not None and is_frames_folder(output):
        log.info(f"PNG frames carry no sound: the sound of {driving.path} is not written (write a video file to "
                 f"keep it; --no-audio silences this note)")
    # The sound is cut where the frames are: from the first one's time, as long as the output.
    with VideoWriter(output, animation.fps, audio_from=audio, audio_start=animation.first / driving.fps,
                     overwrite=options.overwrite, mark=mark, credentials=credentials) as writer:
        for frame in animation:
            writer.write(frame)
    return animation
