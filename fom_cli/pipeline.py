"""One source image and one driving video to one output file, streamed: the work behind `fom animate`
and `fom batch`.

The driving video streams through the networks in batches: memory does not grow with its length. The
output keeps the driving video's frame rate and sound.
"""

import itertools
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from fom_cli.animation import (animator_class, check_animation_mode, default_batch_size, load_model, pick_device,
                               pose_distance)
from fom_cli.checkpoint import BUNDLED_MODEL
from fom_cli.config import frame_size, load_config
from fom_cli.drawing import draw_keypoints
from fom_cli.errors import BadInput, BadOutput
from fom_cli.faces import landmark_model
from fom_cli.media.images import IMAGE_EXTENSIONS, aspect_ratio_differs, fit_frame, read_image, to_uint8
from fom_cli.media.video_in import VIDEO_EXTENSIONS, VideoReader, prefetch
from fom_cli.fetch import checkpoint_or_bundled
from fom_cli.media.files import check_parent_writable, same_path
from fom_cli.media.video_out import VideoWriter, check_video_output, is_frames_folder
from fom_cli.progress import progress_bar


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


def check_outputs(jobs, overwrite=False, job_names=None):
    """Refuse, before any model is loaded or frame decoded, every output that cannot be written or would
    destroy data: an output that is the job's own source or driving video, two jobs writing one file, or
    a path check_video_output refuses. jobs: [(source, driving, output)]; job_names: what to call each
    job in messages ("job 3"), none for `fom animate`."""
    def job(index):
        source, driving, _ = jobs[index]
        pair = f"{source} with {driving}"
        return f"{job_names[index]} ({pair})" if job_names else pair

    writers = {}  # the output's real path -> the index of the first job writing it
    checked_folders = set()
    for index, (source, driving, output) in enumerate(jobs):
        prefix = f"{job_names[index]}: " if job_names else ""
        for role, path in (("source image", source), ("driving video", driving)):
            if same_path(output, path):
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
            check_video_output(output, overwrite)
            if folder not in checked_folders:
                check_parent_writable(output)
                checked_folders.add(folder)
        except BadOutput as error:
            raise BadOutput(f"{prefix}{error}") from None


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


def frame_at(reader, index, fit_size, fit):
    for frame in reader.frames(start=index, stop=index + 1):
        return fit_frame(frame, fit_size, fit)
    raise BadInput(f"{reader.path} has no frame {index} (it has {reader.num_frames or 'fewer'} frames)")


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
    if reader.num_frames is not None and first >= reader.num_frames:
        raise BadInput(f"--start {start:g} is past the end of {reader.path} ({reader.num_frames / reader.fps:.2f} s)")
    if stop is not None and stop <= first:
        raise BadInput(f"--duration {duration:g} from {start:g} s holds no frame of {reader.path} "
                       f"({reader.fps:g} frames/s); make it longer")
    return first, stop


def find_best_frame(animator, reader, source, fit_size, fit, batch_size, quiet, landmarks=None, first=0, stop=None):
    """Index (from `first`) of the driving frame in first..stop whose pose is closest to the source's
    (position and size normalised)."""
    if landmarks is not None:
        source_points = landmarks.landmarks(to_uint8(source))
        if source_points is None:
            landmarks = None  # no face in the source: fall back to the model's keypoints
    if landmarks is None:
        source_points = animator.kp_source["value"][0].cpu().numpy()
    best, best_distance = 0, float("inf")
    frames = prefetch(fit_frame(frame, fit_size, fit) for frame in reader.frames(first, stop))
    index = 0
    with progress_bar(total=None if stop is None else stop - first, unit="frame", desc="finding best frame",
                      disable=quiet) as progress:
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
            progress.update(len(batch))
    return best


def side_by_side(source, driving, prediction, keypoints):
    return np.concatenate([draw_keypoints(source, keypoints["source"]),
                           draw_keypoints(driving, keypoints["driving"]),
                           draw_keypoints(prediction, keypoints["moved"])], axis=1)


def animate_pair(model, source_path, driving_path, output, args):
    from fom_cli.face_animation import animate_faces, uses_faces  # imports pipeline's helpers in turn

    if uses_faces(args):
        return animate_faces(model, source_path, driving_path, output, args)
    config, kp_detector, generator = model
    size = frame_size(config)
    reader = VideoReader(driving_path)
    source_image = read_image(source_path)
    if not args.quiet and aspect_ratio_differs(source_image.shape[:2], size):
        print(f"note: {source_path} is {source_image.shape[1]}x{source_image.shape[0]}; --fit {args.fit} fits it "
              f"to the model's {size[1]}x{size[0]} frame", file=sys.stderr)
    if not args.quiet and aspect_ratio_differs(reader.size, size):
        print(f"note: {driving_path} is {reader.size[1]}x{reader.size[0]}; --fit {args.fit} fits it to the "
              f"model's {size[1]}x{size[0]} frame", file=sys.stderr)
    source = fit_frame(source_image, size, args.fit)

    animator = animator_class(generator)(kp_detector, generator, source, mode=args.mode,
                                         adapt_scale=args.adapt_scale, precision=args.precision)
    batch_size = args.batch_size or default_batch_size(animator.device)
    # The driving frames used: all, or those --start and --duration select. Frame numbers (--best-frame,
    # the best frame found) count from the first of them.
    first, stop = frame_range(reader, args.start, args.duration)
    start = 0
    if args.best_frame is not None:
        start = args.best_frame
        if start < 0 or (stop is not None and start >= stop - first):
            raise BadInput(f"--best-frame {start} is outside {driving_path} "
                           f"(frames 0 to {(stop - first if stop is not None else 1) - 1})")
    elif args.find_best_frame:
        landmarks = landmark_model(device=str(animator.device))
        start = find_best_frame(animator, reader, source, size, args.fit, batch_size, args.quiet, landmarks,
                                first, stop)
        if not args.quiet:
            by = "face landmarks" if landmarks is not None else "the model's keypoints"
            print(f"best frame: {start} (by {by})", file=sys.stderr)
    # The original animates forward from the best frame and backward to the start; both halves measure
    # motion from that frame, so streaming every frame in order with it as the reference is the same.
    animator.set_initial_frame(frame_at(reader, first + start, size, args.fit))

    fps = args.fps or reader.fps
    # Another --fps keeps the driving video's duration: frames are dropped or repeated, so that the motion
    # plays at its own speed and stays in sync with the sound.
    ratio = exact_rate(fps) / exact_rate(reader.fps)
    audio = None if args.no_audio else driving_path
    if audio is not None and reader.has_audio and is_frames_folder(output) and not args.quiet:
        print(f"note: PNG frames carry no sound: the sound of {driving_path} is not written (write a video "
              f"file to keep it; --no-audio silences this note)", file=sys.stderr)
    frames = prefetch((fit_frame(frame, size, args.fit), repeats)
                      for frame, repeats in resampled(reader.frames(first, stop), ratio))
    total = None if stop is None else math.ceil((stop - first) * ratio)
    # The sound is cut where the frames are: from the first one's time, as long as the output.
    with VideoWriter(output, fps, audio_from=audio, audio_start=first / reader.fps,
                     overwrite=getattr(args, "overwrite", False)) as writer, \
            progress_bar(total=total, unit="frame", desc=Path(output).name, disable=args.quiet) as progress:
        for batch in batched(frames, batch_size):
            driving = [frame for frame, _ in batch]
            predictions = animator.animate(np.stack(driving))
            for i, prediction in enumerate(predictions):
                if args.side_by_side:
                    keypoints = {"source": animator.last_keypoints["source"],
                                 "driving": animator.last_keypoints["driving"][i],
                                 "moved": animator.last_keypoints["moved"][i]}
                    prediction = side_by_side(source, driving[i], prediction, keypoints)
                repeats = batch[i][1]
                for _ in range(repeats):
                    writer.write(prediction)
                progress.update(repeats)
    shortfall = reader.shortfall()
    if shortfall:  # even with --quiet: the output is shorter than the user will expect
        print(f"fom: warning: {shortfall}; {output} has {writer.frames_written} frames", file=sys.stderr)
    return output


def note_cpu_speed(args):
    """One note for the options that make a CPU run slower: they pay off on GPUs only. (Measured with the
    bundled model on a 2-core Xeon: fp16 at 0.55-0.6 times fp32's frames/s, bf16 at 0.2-0.45 times.)"""
    slower = []
    if args.precision != "fp32":
        slower.append(f"--precision {args.precision} is meant for GPUs: on the CPU it runs slower than fp32, "
                      f"not faster")
    if args.compile:
        slower.append("--compile is meant for GPUs: on the CPU it spends minutes compiling before the first frame")
    if slower:
        print(f"note: {'; '.join(slower)}", file=sys.stderr)


def load_requested_model(args):
    """(config, keypoint detector, generator) for --checkpoint/--config/--align-corners/--device, loaded once."""
    device = pick_device(args.device)
    if device.type == "cpu" and not args.quiet:
        note_cpu_speed(args)
    config = load_config(args.config) if args.config else None
    checkpoint = checkpoint_or_bundled(args.checkpoint, args.quiet)
    align_corners = None if args.align_corners is None else args.align_corners == "true"
    config, kp_detector, generator, note = load_model(checkpoint, config, align_corners, device,
                                                      precision=args.precision, compile=args.compile)
    check_animation_mode(generator, args.mode, checkpoint)
    if not args.checkpoint:
        note = (f"no --checkpoint: using the bundled {Path(BUNDLED_MODEL).stem} model, trained on cartoon faces "
                "(for real faces: --checkpoint vox)")
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    return config, kp_detector, generator
