"""Find faces in photos and videos and write square, model-ready crops.

Every crop is framed as the VoxCeleb crops the released vox checkpoints were trained on: the whole head,
hair included, with --increase of margin around it, the face a little below the middle (the face window
of fom_cli/compositing.py, the one `fom animate --face` cuts too).

Photos: the most prominent face (or, with --all-faces, every face) is cut out as such a square and
written as OUTDIR/<name>_<n>.png at --size x --size pixels. A folder stands for the photos in it, each
cropped on its own, unless it holds one video's frames: two or more pictures of one size whose names
differ only in a number (frame_0001.png, frame_0002.png, ...). Give such pictures as files (DIR/*.jpg)
to crop them as photos.

Videos: faces are detected frame by frame and linked over time into "tubes", one per face that stays
in view. Every tube lasting at least --min-frames (default: one second) becomes a square clip,
OUTDIR/<name>_<n>.mp4, with the input's frame rate and the matching stretch of its audio (a note says
how many shorter ones were left out). The crop window is fixed over the whole tube (the square holding
the face's window in every frame, as the original crop-video.py fixed its window) while the face stays
near where it started, and follows the face when it moves away or with --smooth. --print-ffmpeg prints
the original's ffmpeg commands instead (fixed windows only; after the mkdir -p that creates OUTDIR).

An input that gives no crop (no face, or none that stays --min-frames) is skipped with a warning naming
it. Exit code: 0 when every input gave crops, 1 when some were skipped and others were cropped, 2 when
nothing was cropped or for an error.

Videos with non-square pixels (a sample aspect ratio other than 1:1, such as carphone's 128:117) are
cropped as they are shown: their frames are stretched to the display shape first, so faces keep their
proportions.

--json prints one line per crop written: input, output, box (the crop window, [left, top, right,
bottom] in input pixels, of the display shape for non-square pixels; it reaches past the frame where the
crop has black borders; for --smooth, the area the moving window covers), face_box (the face's box, over
a clip the union of its boxes), first_frame, last_frame and fps (photos: 0, 0 and null).

examples:
  fom crop photos/*.jpg -o crops/
  fom crop photos/ -o crops/          (a folder of photos: each photo cropped)
  fom crop interview.mp4 -o clips/ --smooth --json
  fom crop talk.mp4 -o clips/ --detector sfd --print-ffmpeg
"""

import dataclasses
import glob
import json
import os
import re
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from fom_cli import faces as face_detection
from fom_cli.compositing import INCREASE, cut, face_window
from fom_cli.errors import BadInput, BadOutput
from fom_cli.face_tracks import MAX_MISSING_SECONDS, clip_for_tube, link_tubes
from fom_cli.media.files import remove_directories
from fom_cli.media.images import IMAGE_EXTENSIONS, frame_files, image_size, read_image, resize_uint8, write_image
from fom_cli.media.video_in import VideoReader
from fom_cli.media.video_out import VideoWriter
from fom_cli.options import add_device, add_quiet, fraction, non_negative_float, positive_int
from fom_cli.progress import progress_bar

# Photos are single detections, so the detector may look at a larger copy than for every video frame:
# this many times its usual limit on the working copy's longer side.
PHOTO_DETAIL = 2


def configure_parser(parser):
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="photos, videos and folders (of photos, or of one video's frames); shell globs welcome")
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR",
                        help="directory for the crops (created if missing)")
    parser.add_argument("--size", type=positive_int, default=256,
                        help="side of the square crops in pixels (default: 256)")
    parser.add_argument("--increase", type=non_negative_float, default=INCREASE,
                        help="margin around the head (hair to below the chin) on each side, as a fraction of its "
                             f"size; 0 cuts at the top of the head (default: {INCREASE})")
    parser.add_argument("--all-faces", action="store_true",
                        help="photos: one crop per face instead of the most prominent face only")
    parser.add_argument("--detector", choices=face_detection.DETECTORS, default="dlib",
                        help="dlib: HOG detector, works offline (default); sfd: face-alignment's S3FD, needs "
                             "its weights in the torch hub cache; auto: sfd when its weights are there, else dlib")
    parser.add_argument("--detector-weights", metavar="PATH",
                        help=f"S3FD weights file ({face_detection.SFD_WEIGHTS_FILE}) for --detector sfd/auto")
    add_device(parser)  # for --detector sfd
    video = parser.add_argument_group("videos")
    video.add_argument("--detect-every", type=positive_int, default=1, metavar="N",
                       help="detect faces in every N-th frame only, carrying boxes in between (default: 1)")
    video.add_argument("--iou", type=fraction, default=0.25,
                       help="least overlap (intersection over union) of a face with its tube to stay in "
                            "it (default: 0.25)")
    video.add_argument("--min-frames", type=positive_int, default=None, metavar="N",
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
    add_quiet(output, "no progress bars")


# --- the original's ffmpeg commands ----------------------------------------------------------------------

def ffmpeg_command(input_path, output_path, window, frame_size, size, start=None, duration=None,
                   stretch=False):
    """The ffmpeg command the original crop-video.py prints for a crop (trim, crop, scale), with a pad
    filter added where the window reaches past the frame (crop cannot make black borders). `stretch`: the
    input has non-square pixels and `frame_size` is its display shape, which a first scale filter makes."""
    frame_height, frame_width = frame_size
    left, top, right, bottom = window.box
    visible_left, visible_top = max(left, 0), max(top, 0)
    visible_width = min(right, frame_width) - visible_left
    visible_height = min(bottom, frame_height) - visible_top
    filters = [f"scale={frame_width}:{frame_height}", "setsar=1"] if stretch else []
    filters.append(f"crop={visible_width}:{visible_height}:{visible_left}:{visible_top}")
    if (visible_width, visible_height) != (window.side, window.side):
        filters.append(f"pad={window.side}:{window.side}:{visible_left - left}:{visible_top - top}:black")
    filters.append(f"scale={size}:{size}")
    trim = f" -ss {start:.3f} -t {duration:.3f}" if start is not None else ""
    return (f"ffmpeg -i {shlex.quote(str(input_path))}{trim} -filter:v {shlex.quote(', '.join(filters))} "
            f"{shlex.quote(str(output_path))}")


def print_ffmpeg(command, output_dir, args):
    """Print one of --print-ffmpeg's commands; the first comes after the mkdir that creates the folder they
    all write into (ffmpeg does not create it)."""
    if not args.printed_mkdir:
        print(f"mkdir -p {shlex.quote(str(output_dir))}")
        args.printed_mkdir = True
    print(command)


# --- the command -----------------------------------------------------------------------------------------

class Skipped(BadInput):
    """An input that gave no crop. Among several inputs it is skipped with a warning; alone, it is the error."""

    def __init__(self, path, reason, hint=None):
        super().__init__(f"{reason} in {path}" + (f"; {hint}" if hint else ""))
        self.path, self.reason = path, reason + (f"; {hint}" if hint else "")

def run(args):
    """Crop every input; a run that fails removes the output folders it created, when they are empty."""
    missing = []  # the output folder and its parents that do not exist yet, outermost first
    folder = Path(args.output_dir).absolute()
    while not folder.exists():
        missing.insert(0, folder)
        folder = folder.parent
    try:
        return crop_inputs(args)
    except BaseException:
        remove_directories(missing)
        raise


def crop_inputs(args):
    # Folders of photos stand for their photos. A path given twice (overlapping shell globs, or a photo
    # given and in a folder given) is cropped once.
    inputs = list(dict.fromkeys(path for name in args.inputs for path in photos_or_video(Path(name))))
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

    args.printed_mkdir = False
    crops_written = 0
    skipped = []
    for input_path in progress_bar(inputs, desc="inputs", unit="input", disable=args.quiet or len(inputs) == 1):
        try:
            if is_photo(input_path):
                crops_written += crop_photo(input_path, output_dir, detector, args)
            else:
                crops_written += crop_video(input_path, output_dir, detector, args)
        except Skipped as skip:
            if len(inputs) == 1:
                raise
            warn(f"skipped {skip.path}: {skip.reason}")
            skipped.append(skip.path)

    if skipped and crops_written == 0:
        raise BadInput(f"no crop written: all {len(inputs)} inputs were skipped (named in the warnings above)")
    if skipped:
        # Partial success: the crops stay, and scripts can tell this run from a complete one by its exit code.
        warn(f"{len(skipped)} of {len(inputs)} inputs skipped: {', '.join(str(path) for path in skipped)}")
        return 1
    return 0


def is_photo(path):
    """Photos by their suffix; everything else is a video: files, animated GIFs, directories of frames."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()


def photos_or_video(path):
    """The inputs a path stands for: for a folder of photos, its photos (each cropped on its own); for
    anything else, a file or a folder of one video's frames (see is_frame_folder), the path itself."""
    if not path.is_dir():
        return [path]
    pictures = [Path(name) for name in frame_files(path)]
    if not pictures or is_frame_folder(pictures):
        return [path]  # a folder without pictures stays one input, refused as a video without frames
    return pictures


def is_frame_folder(pictures):
    """True when a folder's pictures are one video's frames: two or more, of one size, named alike but for
    one number (frame_0001.png, frame_0002.png, ...; 0001.png, 0002.png). Photos differ in size or in
    name (alice.jpg, bob.jpg), and reading them as a video failed at the first of another size."""
    if len(pictures) < 2:
        return False
    # Each name split into its text and its numbers: frames share the text, and of their numbers only one
    # changes from name to name (photos named by date and time differ in several).
    splits = [re.split(r"(\d+)", picture.name.lower()) for picture in pictures]
    if any(len(parts) != len(splits[0]) or parts[0::2] != splits[0][0::2] for parts in splits):
        return False
    numbers_at_each_place = zip(*(parts[1::2] for parts in splits))
    if sum(len(set(numbers)) > 1 for numbers in numbers_at_each_place) != 1:
        return False
    sizes = {image_size(picture) for picture in pictures}
    return len(sizes) == 1 and None not in sizes


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
        earlier = sorted(output_dir.glob(f"{glob.escape(path.stem)}_[0-9]*{suffix}"))
        if earlier:
            raise BadOutput(f"{earlier[0]} exists (an earlier run?); pass --overwrite or choose another -o")


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
    image = face_detection.as_rgb_uint8(read_image(input_path))
    frame_height, frame_width = image.shape[:2]
    found = detector.detect(image, max_side=PHOTO_DETAIL * detector.max_side)
    if not found:
        raise Skipped(input_path, "no face found")
    chosen = found if args.all_faces else found[:1]
    for number, face in enumerate(chosen, start=1):
        window = face_window(face.box, frame_height, frame_width, args.increase)
        output_path = output_dir / output_name(input_path, number)
        if args.print_ffmpeg:
            print_ffmpeg(ffmpeg_command(input_path, output_path, window, (frame_height, frame_width), args.size),
                         output_dir, args)
            continue
        write_image(output_path, cut(image, window, args.size))
        report(args, {"input": str(input_path), "output": str(output_path), "box": list(window.box),
                      "face_box": [round(value, 1) for value in face.box], "first_frame": 0, "last_frame": 0,
                      "fps": None})
    return len(chosen)


def crop_video(input_path, output_dir, detector, args):
    """Write one clip per face tube of a video; returns how many clips were written."""
    reader = VideoReader(input_path)
    fps = reader.fps
    shown_size = display_size(reader)
    if shown_size != reader.size:
        note(f"{input_path} has non-square pixels ({reader.pixel_aspect:.4g}:1): cropping it as shown, "
             f"{shown_size[1]}x{shown_size[0]}", args)

    # Pass 1: find the faces. The detector dominates the time; decoding runs in media's background thread.
    # It looks at the frames as stored and its boxes are stretched to the display shape: the tubes link
    # boxes by overlap (IoU), which stretching one axis does not change.
    detections = []
    num_frames = 0
    frames = progress_bar(reader.frames(), total=reader.num_frames or None, desc=f"faces in {input_path.name}",
                          unit="frame", disable=args.quiet, leave=False)
    for frame_index, frame in enumerate(frames):
        num_frames += 1
        if frame_index % args.detect_every == 0:
            detections.append((frame_index, [as_shown_face(face, reader.size, shown_size)
                                             for face in detector.detect(frame)]))
    if num_frames == 0:
        raise BadInput(f"{input_path} has no video frames")
    frame_size = shown_size

    max_gap = max(args.detect_every, round(MAX_MISSING_SECONDS * fps))
    # Faces are followed from box to box, fixed window or not: comparing with a tube's first box (as the
    # original) cut a face crossing the frame into pieces too short to keep, and it got no clip at all.
    tubes = link_tubes(detections, args.iou, max_gap, follow_face=True)
    min_frames = args.min_frames or max(1, round(fps))
    clips, short, followed = [], [], 0
    for tube in tubes:
        last_frame = tube.last_frame(args.detect_every, num_frames)
        if last_frame - tube.first_frame + 1 < min_frames:
            short.append(last_frame - tube.first_frame + 1)
            continue
        # A fixed window holds a face that stays near where it started; one that leaves that place gets a
        # window following it, as with --smooth (--print-ffmpeg: the window over its whole path).
        follow = args.smooth or (not args.print_ffmpeg and tube.leaves_first_box(args.iou))
        if follow and not args.smooth:
            followed += 1
        clips.append(clip_for_tube(len(clips) + 1, tube, last_frame, frame_size, args.increase, follow, fps))
    if short:
        lengths = ", ".join(str(length) for length in sorted(short, reverse=True)[:5])
        note(f"{len(short)} face track(s) in {input_path.name} lasted less than --min-frames {min_frames} and "
             f"got no clip ({lengths}{', ...' if len(short) > 5 else ''} frames); lower --min-frames to keep them",
             args)
    if followed:
        note(f"{followed} face(s) in {input_path.name} moved away from where they started: their crop windows "
             f"follow them (as with --smooth)", args)
    if not clips:
        # Numbered pictures of one size in a folder are read as a video's frames, but may be photos.
        hint = (f"its pictures were read as one video's frames; to crop each as a photo, give them as files "
                f"({input_path}/*)" if input_path.is_dir() else None)
        raise Skipped(input_path, f"no face stays {min_frames} frames (--min-frames)" if tubes else "no face found",
                      hint)

    if args.print_ffmpeg:
        for clip in clips:
            output_path = output_dir / output_name(input_path, clip.number)
            print_ffmpeg(ffmpeg_command(input_path, output_path, clip.windows[0], frame_size, args.size,
                                        start=clip.first_frame / fps,
                                        duration=(clip.last_frame - clip.first_frame + 1) / fps,
                                        stretch=shown_size != reader.size),
                         output_dir, args)
        return len(clips)

    write_clips(input_path, output_dir, reader, clips, args)
    return len(clips)


def display_size(reader):
    """(height, width) of a video's frames as shown: with non-square pixels, one side is stretched (never
    shrunk, so no detail is lost) until the pixels are square."""
    height, width = reader.size
    if abs(reader.pixel_aspect - 1) < 1e-3:
        return reader.size
    if reader.pixel_aspect > 1:
        return height, round(width * reader.pixel_aspect)
    return round(height / reader.pixel_aspect), width


def as_shown_face(face, stored_size, shown_size):
    """A face found in a stored frame, its box in the pixels of the frame as shown."""
    if stored_size == shown_size:
        return face
    scale_x, scale_y = shown_size[1] / stored_size[1], shown_size[0] / stored_size[0]
    left, top, right, bottom = face.box
    return dataclasses.replace(face, box=(left * scale_x, top * scale_y, right * scale_x, bottom * scale_y))


def as_shown(frames, shown_size):
    """The frames resized to their display shape (they pass unchanged when their pixels are square)."""
    for frame in frames:
        yield frame if frame.shape[:2] == shown_size else resize_uint8(frame, shown_size)


def write_clips(input_path, output_dir, reader, clips, args):
    """Pass 2: decode the video once more and write every clip, each writer open only during its clip."""
    fps = reader.fps
    first_needed = min(clip.first_frame for clip in clips)
    last_needed = max(clip.last_frame for clip in clips)
    open_writers = {}  # clip number -> VideoWriter, entered
    frames = as_shown(reader.frames(start=first_needed, stop=last_needed + 1), display_size(reader))
    frames = progress_bar(frames, total=last_needed + 1 - first_needed, desc=f"clips of {input_path.name}",
                          unit="frame", disable=args.quiet, leave=False)
    try:
        for frame_index, frame in enumerate(frames, start=first_needed):
            for clip in clips:
                if not clip.first_frame <= frame_index <= clip.last_frame:
                    continue
                if clip.number not in open_writers:
                    writer = VideoWriter(output_dir / output_name(input_path, clip.number), fps,
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
