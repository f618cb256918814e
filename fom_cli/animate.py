"""Animate source images with the motion of driving videos.

  fom animate SOURCE DRIVING -o OUTPUT                    one source, one driving video
  fom animate A.png B.png --driving D1.mp4 D2.mp4 -o DIR  every source with every driving video,
                                                          written as DIR/<source>__<driving>.mp4

The driving video streams through the networks in batches: memory does not grow with its length.
The output keeps the driving video's frame rate and sound.
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fom_cli.animation import Animator, default_batch_size, load_model, pick_device, pose_distance
from fom_cli.config import bundled_dir, frame_size, load_config
from fom_cli.drawing import draw_keypoints
from fom_cli.errors import BadInput, FomError
from fom_cli.faces import landmark_model
from fom_cli.media import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReader, VideoWriter, aspect_ratio_differs,
                           fit_frame, prefetch, read_image, to_uint8)

OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")


def configure_parser(parser):
    parser.add_argument("inputs", nargs="+", metavar="SOURCE [DRIVING]",
                        help="a source image and a driving video (or a directory of frames); with --driving, "
                             "every positional is a source image")
    parser.add_argument("--driving", nargs="+", metavar="VIDEO",
                        help="driving videos: animate every source with every one of them")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (.mp4 .mov .mkv .webm .gif) or directory (PNG frames 000000.png ...); "
                             "with several pairs, a directory for <source>__<driving>.mp4 files")
    add_animation_options(parser)


def add_animation_options(parser):
    """The options shared by `fom animate` and `fom batch`."""
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="checkpoint file: an original FOMM one (vox-cpk.pth.tar, ...) or one "
                                            "fom trained (default: the bundled model)")
    model.add_argument("--config", help="config name (vox-256, taichi-256, ...) or YAML path; default: the "
                                        "checkpoint's own, or the bundled config matching its tensor shapes")
    model.add_argument("--align-corners", choices=("true", "false"), default=None,
                       help="grid_sample convention: true = how the released checkpoints were trained (default, "
                            "unless the config says otherwise); false = the original code on today's torch")
    motion = parser.add_argument_group("motion")
    motion.add_argument("--mode", choices=("relative", "absolute"), default="relative",
                        help="relative: apply the driving motion since the start frame to the source's keypoints "
                             "(default); absolute: use the driving keypoints as they are")
    motion.add_argument("--adapt-scale", action=argparse.BooleanOptionalAction, default=True,
                        help="scale relative motion by the size ratio of source and driving keypoint clouds "
                             "(default: on)")
    start = motion.add_mutually_exclusive_group()
    start.add_argument("--best-frame", type=int, metavar="N",
                       help="driving frame N matches the source's pose: motion is measured from it")
    start.add_argument("--find-best-frame", action="store_true",
                       help="find the driving frame whose pose best matches the source (face landmarks when "
                            "face-alignment's model is cached, else the model's own keypoints)")
    media = parser.add_argument_group("frames and output")
    media.add_argument("--fit", choices=("crop", "pad", "stretch"), default="crop",
                       help="how frames of another aspect ratio are fitted to the model's frame: centre crop "
                            "(default), pad with black, or stretch (the original's behaviour)")
    media.add_argument("--fps", type=float, help="output frame rate (default: the driving video's)")
    media.add_argument("--no-audio", action="store_true", help="do not copy the driving video's sound")
    media.add_argument("--side-by-side", action="store_true",
                       help="write source | driving | result panels with keypoints drawn")
    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    run.add_argument("--batch-size", type=int, default=None,
                     help="driving frames per forward pass (default: 8 on CPU, 32 on CUDA)")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="network precision (default fp32); bf16/fp16 autocast the convolutions on GPUs while "
                          "keypoints and sampling grids stay fp32")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the networks (pays off on GPUs for long or many videos: the first batch "
                          "waits for compilation); falls back to plain PyTorch with a warning where it fails")
    run.add_argument("--quiet", action="store_true", help="no progress bar or notes")


# Trained by us on `fom synth` cartoon faces (checkpoints/README.md is its model card).
BUNDLED_MODEL = "toon-128.pth"


def default_checkpoint():
    path = bundled_dir("checkpoints") / BUNDLED_MODEL
    if not path.is_file():
        raise FomError(f"no checkpoint given and the bundled model ({BUNDLED_MODEL}) is not installed: pass "
                       "--checkpoint PATH, e.g. the original vox-cpk.pth.tar from the First Order Motion Model "
                       "project (see README)")
    return path


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


def plan_jobs(args):
    """[(source, driving, output)] from the positionals, --driving and -o."""
    if args.driving:
        sources, drivings = args.inputs, args.driving
    elif len(args.inputs) == 2:
        sources, drivings = args.inputs[:1], args.inputs[1:]
    else:
        raise FomError("give one SOURCE and one DRIVING, or several sources with --driving VIDEO ...")
    sources = [check_source(path) for path in sources]
    drivings = [check_driving(path) for path in drivings]
    output = Path(args.output)
    if len(sources) * len(drivings) == 1:
        return [(sources[0], drivings[0], output)]
    if output.suffix.lower() in OUTPUT_SUFFIXES:
        raise FomError(f"{len(sources) * len(drivings)} source/driving pairs need an output directory, "
                       f"not {output}")
    return [(source, driving, output / f"{source.stem}__{driving.stem}.mp4")
            for source, driving in itertools.product(sources, drivings)]


def batched(iterable, size):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def frame_at(reader, index, fit_size, fit):
    for frame in reader.frames(start=index, stop=index + 1):
        return fit_frame(frame, fit_size, fit)
    raise BadInput(f"{reader.path} has no frame {index} (it has {reader.num_frames or 'fewer'} frames)")


def find_best_frame(animator, reader, source, fit_size, fit, batch_size, quiet, landmarks=None):
    """Index of the driving frame whose pose is closest to the source's (position and size normalised)."""
    if landmarks is not None:
        source_points = landmarks.landmarks(to_uint8(source))
        if source_points is None:
            landmarks = None  # no face in the source: fall back to the model's keypoints
    if landmarks is None:
        source_points = animator.kp_source["value"][0].cpu().numpy()
    best, best_distance = 0, float("inf")
    frames = prefetch(fit_frame(frame, fit_size, fit) for frame in reader.frames())
    index = 0
    with tqdm(total=reader.num_frames, unit="frame", desc="finding best frame", disable=quiet,
              file=sys.stderr) as progress:
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


# --- the side-by-side visualisation --------------------------------------------------------------------

def side_by_side(source, driving, prediction, keypoints):
    return np.concatenate([draw_keypoints(source, keypoints["source"]),
                           draw_keypoints(driving, keypoints["driving"]),
                           draw_keypoints(prediction, keypoints["moved"])], axis=1)


# --- one source/driving pair -----------------------------------------------------------------------------

def animate_pair(model, source_path, driving_path, output, args):
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

    animator = Animator(kp_detector, generator, source, mode=args.mode, adapt_scale=args.adapt_scale,
                        precision=args.precision)
    batch_size = args.batch_size or default_batch_size(animator.device)
    start = 0
    if args.best_frame is not None:
        start = args.best_frame
        if start < 0 or (reader.num_frames is not None and start >= reader.num_frames):
            raise BadInput(f"--best-frame {start} is outside {driving_path} "
                           f"(frames 0 to {(reader.num_frames or 1) - 1})")
    elif args.find_best_frame:
        landmarks = landmark_model(device=str(animator.device))
        start = find_best_frame(animator, reader, source, size, args.fit, batch_size, args.quiet, landmarks)
        if not args.quiet:
            by = "face landmarks" if landmarks is not None else "the model's keypoints"
            print(f"best frame: {start} (by {by})", file=sys.stderr)
    # The original animates forward from the best frame and backward to the start; both halves measure
    # motion from that frame, so streaming every frame in order with it as the reference is the same.
    animator.set_initial_frame(frame_at(reader, start, size, args.fit))

    fps = args.fps or reader.fps
    audio = None if args.no_audio else driving_path
    frames = prefetch(fit_frame(frame, size, args.fit) for frame in reader.frames())
    with VideoWriter(output, fps, audio_from=audio) as writer, \
            tqdm(total=reader.num_frames, unit="frame", desc=Path(output).name, disable=args.quiet,
                 file=sys.stderr) as progress:
        for batch in batched(frames, batch_size):
            predictions = animator.animate(np.stack(batch))
            for i, prediction in enumerate(predictions):
                if args.side_by_side:
                    keypoints = {"source": animator.last_keypoints["source"],
                                 "driving": animator.last_keypoints["driving"][i],
                                 "moved": animator.last_keypoints["moved"][i]}
                    prediction = side_by_side(source, batch[i], prediction, keypoints)
                writer.write(prediction)
            progress.update(len(batch))
    return output


def check_options(args):
    if args.batch_size is not None and args.batch_size < 1:
        raise FomError("--batch-size must be at least 1")
    if args.fps is not None and args.fps <= 0:
        raise FomError("--fps must be positive")


def load_requested_model(args):
    """(config, keypoint detector, generator) for --checkpoint/--config/--align-corners/--device, loaded once."""
    device = pick_device(args.device)
    config = load_config(args.config) if args.config else None
    checkpoint = args.checkpoint or default_checkpoint()
    align_corners = None if args.align_corners is None else args.align_corners == "true"
    config, kp_detector, generator, note = load_model(checkpoint, config, align_corners, device,
                                                      precision=args.precision, compile=args.compile)
    if not args.checkpoint:
        note = (f"no --checkpoint: using the bundled {Path(BUNDLED_MODEL).stem} model, trained on cartoon faces "
                "(for real faces pass an original checkpoint such as vox-cpk.pth.tar)")
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    return config, kp_detector, generator


def run(args):
    jobs = plan_jobs(args)
    check_options(args)
    model = load_requested_model(args)
    for source, driving, output in jobs:
        animate_pair(model, source, driving, output, args)
        if not args.quiet:
            print(f"wrote {output}", file=sys.stderr)
    return 0
