"""Reconstruct test videos from their first frame and measure how far off the result is.

  fom reconstruct --checkpoint runs/toy/checkpoint.pth.tar --data data/faces
  fom reconstruct --checkpoint vox-cpk.pth.tar --data data/vox-png --out results/vox

The original evaluation protocol (its reconstruction.py): for every video in DATA/test/, frame 0 is the
source and each frame is predicted from it with that frame's own keypoints (absolute motion: source and
driving show the same object, so nothing needs transferring). The folder --out (default: reconstruction/
next to the checkpoint) gets, per video:
  png/<video>.png   the reconstructed frames side by side, lossless (as the original writes them)
  <video>.mp4       each frame next to its reconstruction
and metrics.json:
  l1    mean absolute difference between reconstruction and frame (pixel values in [0, 1]), per video
        and the mean over videos (the paper's L1)
  akd   average keypoint distance: mean distance in pixels between the face landmarks found in the
        reconstruction and in the frame (face-alignment's model; skipped when its weights are not cached)
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from fom_cli.animate import default_checkpoint
from fom_cli.animation import Animator, default_batch_size, load_model, pick_device
from fom_cli.config import frame_size, load_config
from fom_cli.errors import BadOutput
from fom_cli.media import to_uint8

DEFAULT_FPS = 25.0


def configure_parser(parser):
    parser.add_argument("--checkpoint", help="the model: a checkpoint fom trained or an original one (default: the "
                                             "bundled toon-128)")
    parser.add_argument("--data", required=True, metavar="DIR", help="data folder; its test/ videos are reconstructed")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: reconstruction/ next to the checkpoint, "
                                                     "or in the current folder for the bundled model)")
    parser.add_argument("--config", help="config name or YAML path (default: the checkpoint's own, or the bundled "
                                         "config matching its tensor shapes)")
    parser.add_argument("--max-videos", type=int, metavar="N", help="only the first N test videos (in name order)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS,
                        help=f"frame rate of the mp4 files (default {DEFAULT_FPS:g})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="frames per forward pass (default: 8 on CPU, 32 on CUDA)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args):
    from fom_cli.errors import FomError

    if args.max_videos is not None and args.max_videos < 1:
        raise FomError(f"--max-videos must be 1 or more, got {args.max_videos}")
    if args.batch_size is not None and args.batch_size < 1:
        raise FomError(f"--batch-size must be 1 or more, got {args.batch_size}")
    checkpoint = args.checkpoint or default_checkpoint()
    if args.out:
        out_dir = Path(args.out)
    elif args.checkpoint:
        out_dir = Path(args.checkpoint).parent / "reconstruction"
    else:   # the bundled model sits inside the installed package: write here instead
        out_dir = Path("reconstruction")
    metrics = evaluate(checkpoint, args.data, out_dir, config=load_config(args.config) if args.config else None,
                       device=pick_device(args.device), batch_size=args.batch_size, max_videos=args.max_videos,
                       fps=args.fps, quiet=args.quiet)
    if not args.quiet:
        akd = f", AKD {metrics['akd']:.3f} px" if metrics["akd"] is not None else f" (AKD {metrics['akd_note']})"
        print(f"reconstructed {len(metrics['l1'])} videos: L1 {metrics['l1_mean']:.5f} (copying the source: "
              f"{metrics['copy_source_l1_mean']:.5f}){akd}; wrote {out_dir}")
    return 0


# --- the measurements ---------------------------------------------------------------------------------------

def reconstruct_video(kp_detector, generator, video, batch_size=4):
    """Frames (T, H, W, 3) float32 in [0, 1] -> their reconstructions from frame 0, same shape."""
    animator = Animator(kp_detector, generator, video[0], mode="absolute")
    return animator.animate_all(video, batch_size)


def l1_distance(predictions, video):
    """The paper's L1: mean absolute pixel difference, values in [0, 1]."""
    return float(np.abs(predictions.astype(np.float64) - video.astype(np.float64)).mean())


def landmark_distances(landmark_model, predictions, video):
    """Mean landmark distance in pixels for every frame where a face is found in both images."""
    distances = []
    for predicted, frame in zip(to_uint8(predictions), to_uint8(video)):
        points_predicted, points_frame = landmark_model.landmarks(predicted), landmark_model.landmarks(frame)
        if points_predicted is not None and points_frame is not None:
            distances.append(float(np.linalg.norm(points_predicted - points_frame, axis=1).mean()))
    return distances


def _landmark_model(device):
    """face-alignment's landmark model, or (None, why not)."""
    from fom_cli.faces import landmark_model

    model = landmark_model(str(device))
    if model is None:
        return None, "skipped: face-alignment's landmark weights are not in the torch hub cache"
    return model, None


def _write_json(path, data):
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
    os.replace(temporary, path)


def evaluate(checkpoint, data_dir, out_dir, config=None, device="cpu", batch_size=None, max_videos=None,
             fps=DEFAULT_FPS, quiet=True):
    """Reconstruct every test video, write the outputs and metrics.json; returns the metrics dict."""
    import imageio.v3 as iio
    from tqdm import tqdm

    from fom_cli.media import VideoWriter
    from fom_cli.training.data import FramesDataset

    device = torch.device(device)
    config, kp_detector, generator, _ = load_model(checkpoint, config=config, device=device)
    height, width = frame_size(config)
    dataset = FramesDataset(data_dir, frame_shape=(height, width, 3), is_train=False)
    indices = range(len(dataset) if max_videos is None else min(max_videos, len(dataset)))
    batch_size = batch_size or default_batch_size(device)

    out_dir = Path(out_dir)
    try:
        (out_dir / "png").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadOutput(f"cannot create {out_dir}: {error.strerror}") from None
    landmarks, akd_note = _landmark_model(device)

    l1, copy_source_l1, akd_per_video = {}, {}, {}
    for index in tqdm(indices, desc="reconstruct", unit="video", file=sys.stderr, disable=quiet):
        item = dataset[index]
        name, video = item["name"], item["video"].transpose(1, 2, 3, 0)   # (3, T, H, W) -> (T, H, W, 3)
        predictions = reconstruct_video(kp_detector, generator, video, batch_size)
        l1[name] = l1_distance(predictions, video)
        copy_source_l1[name] = l1_distance(np.broadcast_to(video[:1], video.shape), video)
        if landmarks is not None:
            distances = landmark_distances(landmarks, predictions, video)
            if distances:
                akd_per_video[name] = float(np.mean(distances))

        stem = Path(name).stem if Path(name).suffix else name
        iio.imwrite(out_dir / "png" / f"{stem}.png", np.concatenate(list(to_uint8(predictions)), axis=1))
        with VideoWriter(out_dir / f"{stem}.mp4", fps=fps) as writer:
            for frame, predicted in zip(to_uint8(video), to_uint8(predictions)):
                writer.write(np.concatenate([frame, predicted], axis=1))

    metrics = {"checkpoint": str(checkpoint), "data": str(data_dir), "protocol": "frame 0 is the source; every frame "
               "is reconstructed with its own keypoints (absolute motion)", "l1": l1,
               "l1_mean": float(np.mean(list(l1.values()))),
               # The do-nothing baseline: every frame predicted as the source frame.
               "copy_source_l1": copy_source_l1, "copy_source_l1_mean": float(np.mean(list(copy_source_l1.values())))}
    if landmarks is not None and not akd_per_video:
        akd_note = "skipped: no face found by the landmark model in any reconstructed frame"
    metrics["akd"] = float(np.mean(list(akd_per_video.values()))) if akd_per_video else None
    metrics["akd_per_video"] = akd_per_video
    if akd_note:
        metrics["akd_note"] = akd_note
    _write_json(out_dir / "metrics.json", metrics)
    return metrics
