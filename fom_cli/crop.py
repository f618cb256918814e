"""Find faces in photos and videos and write square, model-ready crops.

Photos: the most prominent face (or, with --all-faces, every face) is cut out as a square with a margin
around it and written as OUTDIR/<name>_<n>.png at --size x --size pixels.

Videos: faces are detected frame by frame and linked over time into "tubes", one per face that stays
in view. Every tube lasting at least --min-frames (default: one second) becomes a square clip,
OUTDIR/<name>_<n>.mp4, with the input's frame rate and the matching stretch of its audio. The crop
window is fixed over the whole tube (the union of the face's boxes, as the original crop-video.py) or,
with --smooth, follows the face. --print-ffmpeg prints the original's ffmpeg commands instead.

--json prints one line per crop written: input, output, box (the crop window, [left, top, right,
bottom] in input pixels; it reaches past the frame where the crop has black borders; for --smooth, the
area the moving window covers), face_box (the face's box, over a clip the union of its boxes),
first_frame, last_frame and fps (photos: 0, 0 and null).

examples:
  fom crop photos/*.jpg -o crops/
  fom crop interview.mp4 -o clips/ --smooth --json
  fom crop talk.mp4 -o clips/ --detector sfd --print-ffmpeg
"""

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fom_cli import faces as face_detection
from fom_cli import media
from fom_cli.errors import BadInput, BadOutput

# A detector misses a face now and then (a blink, a turn, motion blur). A tube survives this long without
# a detection, its box carried over, so one miss does not cut a talking head into two short clips.
MAX_MISSING_SECONDS = 0.5

# --smooth: the window's centre and size follow the face through a Gaussian average over time, this wide
# (standard deviation), so detector jitter does not shake the clip.
SMOOTH_SECONDS = 0.2

# Photos are single detections, so the detector may look at a larger copy than for every video frame:
# this many times its usual limit on the working copy's longer side.
PHOTO_DETAIL = 2


def configure_parser(parser):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="photos and videos (shell globs welcome)")
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR",
                        help="directory for the crops (created if missing)")
    parser.add_argument("--size", type=_positive_int, default=256,
                        help="side of the square crops in pixels (default: 256)")
    parser.add_argument("--increase", type=_non_negative_float, default=0.1,
                        help="margin added on each side of the face box, as a fraction of its size (default: 0.1)")
    parser.add_argument("--all-faces", action="store_true",
                        help="photos: one crop per face instead of the most prominent face only")
    parser.add_argument("--detector", choices=face_detection.DETECTORS, default="dlib",
                        help="dlib: HOG detector, works offline (default); sfd: face-alignment's S3FD, needs "
                             "its weights in the torch hub cache; auto: sfd when its weights are there, else dlib")
    parser.add_argument("--detector-weights", metavar="PATH",
                        help=f"S3FD weights file ({face_detection.SFD_WEIGHTS_FILE}) for --detector sfd/auto")
    parser.add_argument("--device", default="auto",
                        help="torch device for --detector sfd: auto (CUDA when available), cpu, cuda or cuda:N")
    video = parser.add_argument_group("videos")
    video.add_argument("--detect-every", type=_positive_int, default=1, metavar="N",
                       help="detect faces in every N-th frame only, carrying boxes in between (default: 1)")
    video.add_argument("--iou", type=_fraction, default=0.25,
                       help="least overlap (intersection over union) of a face with its tube to stay in "
                            "it (default: 0.25)")
    video.add_argument("--min-frames", type=_positive_int, default=None, metavar="N",
                       help="shortest tube written as a clip (default: one second of video)")
    video.add_argument("--smooth", action="store_true",
                       help="let the crop window follow the face (smoothed) instead of fixing it over the tube")
    output = parser.add_argument_group("output")
    output_kind = output.add_mutually_exclusive_group()
    output_kind.add_argument("--print-ffmpeg", action="store_true",
                             help="print the original crop-video.py's ffmpeg commands instead of writing crops")
    output_kind.add_argument("--json", action="store_true",
                             help="print one JSON line per crop written (input, output, box, first_frame, "
                                  "last_frame, fps)")
    output.add_argument("--overwrite", action="store_true", help="replace crops left in OUTDIR by an earlier run")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise ValueError(text)
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(text)
    return value


# argparse names the expected kind in its "invalid ... value" message after the type function's name.
_positive_int.__name__ = "positive integer"
_non_negative_float.__name__ = "non-negative number"
_fraction.__name__ = "number from 0 to 1"


# --- crop windows ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A square crop window in frame pixels; it may reach past the frame, where the crop is black."""

    left: int
    top: int
    side: int

    @property
    def box(self):
        return (self.left, self.top, self.left + self.side, self.top + self.side)


def square_window(box, increase, frame_height, frame_width):
    """The crop window for a face box, as the original crop-video.py draws it, kept inside the frame.

    The box grows by `increase` of its size on each side and becomes a square around its centre (side:
    (1 + 2 * increase) times the box's longer side). A square reaching past the frame's edge slides back
    in rather than shrinking, so the face keeps its margin and the crop its aspect ratio; only a square
    larger than the frame itself reaches past it (covering the whole frame, black beyond).
    """
    left, top, right, bottom = box
    side = max(1, round((1 + 2 * increase) * max(right - left, bottom - top)))

    def place(centre, frame_extent):
        start = round(centre - side / 2)
        # For a square that fits, starts from 0 to extent - side keep it inside; for one that does not,
        # starts from extent - side to 0 keep the frame inside it. Either way: clamp to that range.
        lowest, highest = sorted((0, frame_extent - side))
        return min(max(start, lowest), highest)

    return Window(left=place((left + right) / 2, frame_width), top=place((top + bottom) / 2, frame_height), side=side)


def cut(frame, window, size):
    """The window's square of the frame (black beyond the frame), resized to size x size."""
    frame_height, frame_width = frame.shape[:2]
    left, top, right, bottom = window.box
    visible = frame[max(top, 0):min(bottom, frame_height), max(left, 0):min(right, frame_width)]
    if visible.shape[:2] != (window.side, window.side):
        square = np.zeros((window.side, window.side, 3), dtype=frame.dtype)
        square[max(-top, 0):max(-top, 0) + visible.shape[0], max(-left, 0):max(-left, 0) + visible.shape[1]] = visible
        visible = square
    return media.to_uint8(media.resize(visible, (size, size)))


# --- tubes: one face followed through a video ------------------------------------------------------------

@dataclass
class Tube:
    """One face followed over time: the frames it was detected in and its box in each of them."""

    frames: list
    boxes: list

    @property
    def first_frame(self):
        return self.frames[0]

    def last_frame(self, detect_every, num_frames):
        """The last frame the tube covers: its last detection's box is carried to the next detection."""
        return min(self.frames[-1] + detect_every - 1, num_frames - 1)

    def boxes_per_frame(self, last_frame):
        """(frames, 4) boxes for every frame from the first to last_frame: interpolated between detections
        (with --detect-every, or where a detection was missed), the last one carried to the end."""
        frame_indices = np.arange(self.first_frame, last_frame + 1)
        known = np.asarray(self.boxes, dtype=np.float64)
        return np.stack([np.interp(frame_indices, self.frames, known[:, k]) for k in range(4)], axis=1)


def link_tubes(detections, iou_threshold, max_gap, follow_face):
    """Link per-frame detections into tubes, one per face that stays in view.

    detections: (frame index, faces) in frame order. A face joins the tube it overlaps most (IoU above
    iou_threshold), each tube taking at most one face per frame; a face joining none starts a new tube. A
    tube ends when no face has joined it for more than max_gap frames.

    The tube's box a new face is compared with: its first box (follow_face False: as the original, since a
    fixed window can only hold a face that stays near where it started), or its latest box (follow_face
    True: the window moves with the face, so the face may travel anywhere).
    """
    live, ended = [], []
    for frame_index, frame_faces in detections:
        still_live = []
        for tube in live:
            (ended if frame_index - tube.frames[-1] > max_gap else still_live).append(tube)
        live = still_live

        # Best-overlapping pairs first, so two faces near one tube do not fight over it in list order.
        pairs = []
        for tube_number, tube in enumerate(live):
            tube_box = tube.boxes[-1] if follow_face else tube.boxes[0]
            for face_number, face in enumerate(frame_faces):
                overlap = face_detection.iou(tube_box, face.box)
                if overlap > iou_threshold:
                    pairs.append((overlap, tube_number, face_number))
        taken_tubes, taken_faces = set(), set()
        for _overlap, tube_number, face_number in sorted(pairs, reverse=True):
            if tube_number in taken_tubes or face_number in taken_faces:
                continue
            taken_tubes.add(tube_number)
            taken_faces.add(face_number)
            live[tube_number].frames.append(frame_index)
            live[tube_number].boxes.append(frame_faces[face_number].box)
        for face_number, face in enumerate(frame_faces):
            if face_number not in taken_faces:
                live.append(Tube(frames=[frame_index], boxes=[face.box]))
    return sorted(ended + live, key=lambda tube: (tube.first_frame, tube.boxes[0][0]))


def gaussian_smooth(values, sigma):
    """values (frames, ...) averaged over time with a Gaussian of sigma frames; ends repeat their value."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(3 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    padded = np.pad(values, [(radius, radius)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    return sum(weight * padded[k:k + len(values)] for k, weight in enumerate(weights))


@dataclass
class Clip:
    """One tube to write: its frames, the crop window of each, and the face boxes it was made from."""

    number: int
    first_frame: int
    last_frame: int
    windows: list  # one Window per frame, first to last
    face_box: tuple  # union of the face's boxes over the clip

    def window_at(self, frame_index):
        return self.windows[frame_index - self.first_frame]

    @property
    def bounds(self):
        """The union of the clip's windows: its fixed window, or the area a moving one swept."""
        return tuple(int(value) for value in face_detection.union_box([window.box for window in self.windows]))


def clip_for_tube(number, tube, last_frame, frame_size, increase, smooth, fps):
    """The clip of a tube: one window over the union of its boxes, or (smooth) a window following it."""
    frame_height, frame_width = frame_size
    boxes = tube.boxes_per_frame(last_frame)
    face_box = face_detection.union_box(boxes)
    if not smooth:
        windows = [square_window(face_box, increase, frame_height, frame_width)] * len(boxes)
    else:
        # Smooth centre and size rather than the four sides: a face's size changes slower than its place,
        # and a window built from them stays square whatever the smoothing does.
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        track = gaussian_smooth(np.column_stack([centres, sizes]), SMOOTH_SECONDS * fps)
        windows = [square_window((x - size / 2, y - size / 2, x + size / 2, y + size / 2), increase,
                                 frame_height, frame_width)
                   for x, y, size in track]
    return Clip(number=number, first_frame=tube.first_frame, last_frame=last_frame, windows=windows,
                face_box=face_box)


# --- the original's ffmpeg commands ----------------------------------------------------------------------

def ffmpeg_command(input_path, output_path, window, frame_size, size, start=None, duration=None):
    """The ffmpeg command the original crop-video.py prints for a crop (trim, crop, scale), with a pad
    filter added where the window reaches past the frame (crop cannot make black borders)."""
    frame_height, frame_width = frame_size
    left, top, right, bottom = window.box
    visible_left, visible_top = max(left, 0), max(top, 0)
    visible_width = min(right, frame_width) - visible_left
    visible_height = min(bottom, frame_height) - visible_top
    filters = [f"crop={visible_width}:{visible_height}:{visible_left}:{visible_top}"]
    if (visible_width, visible_height) != (window.side, window.side):
        filters.append(f"pad={window.side}:{window.side}:{visible_left - left}:{visible_top - top}:black")
    filters.append(f"scale={size}:{size}")
    trim = f" -ss {start:.3f} -t {duration:.3f}" if start is not None else ""
    return (f"ffmpeg -i {shlex.quote(str(input_path))}{trim} -filter:v {shlex.quote(', '.join(filters))} "
            f"{shlex.quote(str(output_path))}")


# --- the command -----------------------------------------------------------------------------------------

def run(args):
    # A path given twice (overlapping shell globs) is cropped once.
    inputs = list(dict.fromkeys(Path(name) for name in args.inputs))
    check_inputs(inputs)
    output_dir = Path(args.output_dir)
    if args.smooth and args.print_ffmpeg:
        raise BadInput("--print-ffmpeg cannot express --smooth's moving window; leave one of them out")
    if args.detector_weights and args.detector == "dlib":
        raise BadInput("--detector-weights is for the sfd detector; add --detector sfd (or auto)")
    if not args.print_ffmpeg:
        prepare_output_dir(output_dir)
        if not args.overwrite:
            check_no_earlier_crops(inputs, output_dir)

    detector = face_detection.make_detector(args.detector, weights=args.detector_weights, device=args.device)
    if args.detector == "auto":
        note(f"using the {detector.name} face detector", args)

    crops_written = 0
    photos_without_faces = []
    for input_path in tqdm(inputs, desc="inputs", unit="input", disable=args.quiet or len(inputs) == 1,
                           file=sys.stderr):
        if is_photo(input_path):
            written = crop_photo(input_path, output_dir, detector, args)
            if written == 0:
                photos_without_faces.append(input_path)
        else:
            written = crop_video(input_path, output_dir, detector, args)
        crops_written += written

    if photos_without_faces:
        others = f" (and {len(photos_without_faces) - 1} more photos)" if len(photos_without_faces) > 1 else ""
        raise BadInput(f"no face found in {photos_without_faces[0]}{others}")
    if crops_written == 0:
        raise BadInput("no face found in any input" if len(inputs) > 1 else f"no face found in {inputs[0]}")
    return 0


def is_photo(path):
    """Photos by their suffix; everything else is a video: files, animated GIFs, directories of frames."""
    return path.suffix.lower() in media.IMAGE_EXTENSIONS and not path.is_dir()


def output_name(input_path, number):
    """<input stem>_<n>.png for photos, .mp4 for videos."""
    return f"{input_path.stem}_{number}{'.png' if is_photo(input_path) else '.mp4'}"


def check_inputs(inputs):
    """Every input exists, and no two would write crops of the same name."""
    for path in inputs:
        if not path.exists():
            raise BadInput(f"{path}: no such file; check the path")
    writes = {}
    for path in inputs:
        first_output = output_name(path, 1)
        if first_output in writes:
            raise BadInput(f"{writes[first_output]} and {path} would both write {first_output}; "
                           f"crop them in separate runs with different -o")
        writes[first_output] = path


def prepare_output_dir(output_dir):
    """Create the output directory; BadOutput if it cannot be created or written to."""
    if output_dir.exists() and not output_dir.is_dir():
        raise BadOutput(f"output directory {output_dir} is a file; choose another -o")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadOutput(f"cannot create output directory {output_dir}: {error.strerror or error}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise BadOutput(f"output directory {output_dir} is not writable")


def check_no_earlier_crops(inputs, output_dir):
    """Refuse to mix crops with those of an earlier run (which might have had more faces)."""
    for path in inputs:
        suffix = Path(output_name(path, 1)).suffix
        earlier = sorted(output_dir.glob(f"{glob_escape(path.stem)}_[0-9]*{suffix}"))
        if earlier:
            raise BadOutput(f"{earlier[0]} exists (an earlier run?); pass --overwrite or choose another -o")


def glob_escape(text):
    """text with glob's special characters made literal (file names may hold [ ] * ?)."""
    return "".join(f"[{character}]" if character in "[]*?" else character for character in text)


def note(message, args):
    """A remark on stderr (not with --quiet), between progress bars."""
    if not args.quiet:
        tqdm.write(f"fom: {message}", file=sys.stderr)


def warn(message):
    """A warning on stderr, even with --quiet: something did not go as asked."""
    tqdm.write(f"fom: warning: {message}", file=sys.stderr)


def report(args, record):
    """One JSON line per crop written, for scripts (--json)."""
    if args.json:
        print(json.dumps(record), flush=True)


def crop_photo(input_path, output_dir, detector, args):
    """Crop the most prominent face (or every face) of a photo; returns how many crops were written."""
    image = face_detection.as_rgb_uint8(media.read_image(input_path))
    frame_height, frame_width = image.shape[:2]
    found = detector.detect(image, max_side=PHOTO_DETAIL * detector.max_side)
    chosen = found if args.all_faces else found[:1]
    for number, face in enumerate(chosen, start=1):
        window = square_window(face.box, args.increase, frame_height, frame_width)
        output_path = output_dir / output_name(input_path, number)
        if args.print_ffmpeg:
            print(ffmpeg_command(input_path, output_path, window, (frame_height, frame_width), args.size))
            continue
        media.write_image(output_path, cut(image, window, args.size))
        report(args, {"input": str(input_path), "output": str(output_path), "box": list(window.box),
                      "face_box": [round(value, 1) for value in face.box], "first_frame": 0, "last_frame": 0,
                      "fps": None})
    return len(chosen)


def crop_video(input_path, output_dir, detector, args):
    """Write one clip per face tube of a video; returns how many clips were written."""
    reader = media.VideoReader(input_path)
    fps = reader.fps

    # Pass 1: find the faces. The detector dominates the time; decoding runs in media's background thread.
    detections = []
    num_frames = 0
    frames = tqdm(reader.frames(), total=reader.num_frames or None, desc=f"faces in {input_path.name}",
                  unit="frame", disable=args.quiet, leave=False, file=sys.stderr)
    for frame_index, frame in enumerate(frames):
        num_frames += 1
        frame_size = frame.shape[:2]
        if frame_index % args.detect_every == 0:
            detections.append((frame_index, detector.detect(frame)))
    if num_frames == 0:
        raise BadInput(f"{input_path} has no video frames")

    max_gap = max(args.detect_every, round(MAX_MISSING_SECONDS * fps))
    tubes = link_tubes(detections, args.iou, max_gap, follow_face=args.smooth)
    min_frames = args.min_frames or max(1, round(fps))
    clips = []
    for tube in tubes:
        last_frame = tube.last_frame(args.detect_every, num_frames)
        if last_frame - tube.first_frame + 1 >= min_frames:
            clips.append(clip_for_tube(len(clips) + 1, tube, last_frame, frame_size, args.increase, args.smooth, fps))
    if not clips:
        if tubes:
            warn(f"no face stays {min_frames} frames (--min-frames) in {input_path}; no clip written")
        else:
            warn(f"no face found in {input_path}")
        return 0

    if args.print_ffmpeg:
        for clip in clips:
            output_path = output_dir / output_name(input_path, clip.number)
            print(ffmpeg_command(input_path, output_path, clip.windows[0], frame_size, args.size,
                                 start=clip.first_frame / fps,
                                 duration=(clip.last_frame - clip.first_frame + 1) / fps))
        return len(clips)

    write_clips(input_path, output_dir, reader, clips, args)
    return len(clips)


def write_clips(input_path, output_dir, reader, clips, args):
    """Pass 2: decode the video once more and write every clip, each writer open only during its clip."""
    fps = reader.fps
    first_needed = min(clip.first_frame for clip in clips)
    last_needed = max(clip.last_frame for clip in clips)
    open_writers = {}  # clip number -> media.VideoWriter, entered
    frames = tqdm(reader.frames(start=first_needed, stop=last_needed + 1), total=last_needed + 1 - first_needed,
                  desc=f"clips of {input_path.name}", unit="frame", disable=args.quiet, leave=False, file=sys.stderr)
    try:
        for frame_index, frame in enumerate(frames, start=first_needed):
            for clip in clips:
                if not clip.first_frame <= frame_index <= clip.last_frame:
                    continue
                if clip.number not in open_writers:
                    writer = media.VideoWriter(output_dir / output_name(input_path, clip.number), fps,
                                               audio_from=input_path if reader.has_audio else None,
                                               audio_start=clip.first_frame / fps)
                    open_writers[clip.number] = writer.__enter__()
                open_writers[clip.number].write(cut(frame, clip.window_at(frame_index), args.size))
                if frame_index == clip.last_frame:
                    finish_clip(open_writers.pop(clip.number), input_path, output_dir, clip, fps, args)
        # A video that decodes fewer frames the second time round: keep what was written.
        for clip in clips:
            if clip.number in open_writers:
                finish_clip(open_writers.pop(clip.number), input_path, output_dir, clip, fps, args)
    except BaseException as error:
        # The writers delete their unfinished files when told about the error.
        for writer in open_writers.values():
            writer.__exit__(type(error), error, error.__traceback__)
        raise


def finish_clip(writer, input_path, output_dir, clip, fps, args):
    writer.__exit__(None, None, None)
    report(args, {"input": str(input_path), "output": str(output_dir / output_name(input_path, clip.number)),
                  "box": list(clip.bounds), "face_box": [round(float(value), 1) for value in clip.face_box],
                  "first_frame": clip.first_frame, "last_frame": clip.last_frame, "fps": fps})
