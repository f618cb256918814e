"""Reconstruction, the original evaluation protocol (its reconstruction.py): for every test video, frame
0 is the source and each frame is predicted from it with that frame's own keypoints (absolute motion:
source and driving show the same object, so nothing needs transferring). `fom reconstruct` runs it. With
a TPSMM checkpoint that has a background predictor, every frame's background motion comes from it, as in
the TPSMM original's reconstruction.py.

metrics.json holds:
  l1    mean absolute difference between reconstruction and frame (pixel values in [0, 1]), per video
        and the mean over videos (the paper's L1), next to the copy-the-source baseline
  akd   average keypoint distance: mean distance in pixels between the face landmarks found in the
        reconstruction and in the frame (face-alignment's model; skipped when its weights are not cached)
"""

from pathlib import Path

import numpy as np
import torch

from fom_cli import __version__
from fom_cli.animation import Animator
from fom_cli.animation_tpsmm import TpsAnimator, TpsModel
from fom_cli.config import frame_size
from fom_cli.families import load_networks
from fom_cli.errors import BadOutput
from fom_cli.media.files import write_json
from fom_cli.media.images import to_uint8, write_image
from fom_cli.media.marks import SyntheticMedia
from fom_cli.media.video_in import DEFAULT_FPS
from fom_cli.media.video_out import VideoWriter
from fom_cli.runtime import default_batch_size


def reconstruct_video(kp_detector, generator, video, batch_size=4):
    """Frames (T, H, W, 3) float32 in [0, 1] -> their reconstructions from frame 0, same shape."""
    if isinstance(generator, TpsModel):
        animator = TpsAnimator(kp_detector, generator, video[0], mode="absolute",
                               background=generator.bg_predictor is not None)
    else:
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


def evaluate(checkpoint, data_dir, out_dir, config=None, device="cpu", batch_size=None, max_videos=None,
             fps=DEFAULT_FPS, quiet=True, mark=True):
    """Reconstruct every test video, write the outputs and metrics.json; returns the metrics dict. mark: the
    outputs say in their metadata that they are synthetic (media/marks.py)."""
    from fom_cli.progress import progress_bar

    from fom_cli.training.data import FramesDataset

    device = torch.device(device)
    networks = load_networks(checkpoint, config=config, device=device)
    config, kp_detector, generator = networks.config, networks.kp_detector, networks.generator
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
    for index in progress_bar(indices, desc="reconstruct", unit="video", disable=quiet):
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
        synthetic = None
        if mark:
            synthetic = SyntheticMedia(tool=f"fom {__version__}", model=networks.identity(), source_image=name)
        write_image(out_dir / "png" / f"{stem}.png", np.concatenate(list(to_uint8(predictions)), axis=1),
                    mark=None if synthetic is None else synthetic.png)
        with VideoWriter(out_dir / f"{stem}.mp4", fps=fps, mark=synthetic) as writer:
            for frame, predicted in zip(to_uint8(video), to_uint8(predictions)):
                writer.write(np.concatenate([frame, predicted], axis=1))

    metrics = {"checkpoint": str(checkpoint), "data": str(data_dir), "protocol": "frame 0 is the source; every frame "
               "is reconstructed with its own keypoints (absolute motion)", "l1": l1,
               "l1_mean": float(np.mean(list(l1.values()))),
               # The do-nothing baseline: every frame predicted as the source frame.
               "copy_source_l1": copy_source_l1, "copy_source_l1_mean": float(np.mean(list(copy_source_l1.values())))}
    if isinstance(generator, TpsModel):
        # The original's reconstruction predicts the background's motion where the model has a predictor;
        # a slimmed file (a registry name's cache) has none.
        metrics["background_motion"] = generator.bg_predictor is not None
    if landmarks is not None and not akd_per_video:
        akd_note = "skipped: no face found by the landmark model in any reconstructed frame"
    metrics["akd"] = float(np.mean(list(akd_per_video.values()))) if akd_per_video else None
    metrics["akd_per_video"] = akd_per_video
    if akd_note:
        metrics["akd_note"] = akd_note
    write_json(out_dir / "metrics.json", metrics)
    return metrics
