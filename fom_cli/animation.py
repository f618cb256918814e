"""Animation: keypoint motion transfer and the Animator that renders driving frames in batches.

Relative motion (the paper's default): the driving video's keypoint motion since its first frame (or
the chosen start frame) is applied to the source's keypoints, so the source keeps its own shape and only
borrows the motion. Absolute motion uses the driving keypoints as they are (the reconstruction protocol:
source and driving are the same object). Adapt-scale multiplies relative displacements by the ratio of
the two keypoint clouds' sizes (square roots of their convex-hull areas).

Thin-Plate Spline Motion Model checkpoints animate with animation_tpsmm.TpsAnimator, which has the
Animator's interface; families.py says which family a checkpoint is and loads either.
"""

import contextlib

import numpy as np
import torch

from fom_cli.checkpoint import load_state
from fom_cli.errors import BadCheckpoint, FomError
from fom_cli.models import build_generator, build_keypoint_detector
from fom_cli.models.blocks import full_precision
from fom_cli.models.inference import optimize_for_inference
from fom_cli.models.keypoints import convex_hull_area
from fom_cli.runtime import AUTOCAST_DTYPES, CompiledOrEager, silence_cuda_home_warning, to_tensor


def movement_scale(kp_source, kp_driving_initial):
    """sqrt(source hull area) / sqrt(driving hull area): how much bigger the source's keypoint cloud is."""
    source_area = convex_hull_area(kp_source["value"][0].detach().cpu().numpy())
    driving_area = convex_hull_area(kp_driving_initial["value"][0].detach().cpu().numpy())
    if driving_area == 0:
        return 1.0
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def relative_motion(kp_source, kp_driving, kp_driving_initial, scale=1.0, use_relative_jacobian=True):
    """Source keypoints moved by the driving motion since the initial driving frame.

    kp_driving may hold a batch of frames; kp_source and kp_driving_initial have batch 1. For models
    without jacobians (zero-order), only the values move. Always float32, also under autocast: GPUs have
    no half-precision matrix inverse.
    """
    kp_source, kp_driving, kp_driving_initial = ({key: full_precision(value) for key, value in kp.items()}
                                                 for kp in (kp_source, kp_driving, kp_driving_initial))
    with torch.autocast(kp_driving["value"].device.type, enabled=False):
        value = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
        moved = {"value": value}
        if "jacobian" in kp_driving:
            if use_relative_jacobian:
                change = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_driving_initial["jacobian"]))
                moved["jacobian"] = torch.matmul(change, kp_source["jacobian"])
            else:
                moved["jacobian"] = kp_driving["jacobian"]
    return moved


def normalized_shape(points):
    """Centre a point cloud and divide by the square root of its hull area: comparable across sizes."""
    points = np.asarray(points, dtype=np.float64)
    points = points - points.mean(axis=0, keepdims=True)
    area = convex_hull_area(points)
    return points / np.sqrt(area) if area > 0 else points


def pose_distance(a, b):
    """How far apart two poses are, after normalising position and scale (the original's criterion)."""
    return float(((normalized_shape(a) - normalized_shape(b)) ** 2).sum())


def load_fomm_networks(checkpoint, config, path, device="cpu", optimize=True, prepack=False, align_corners=None):
    """(keypoint detector, generator) from a FOMM checkpoint dict, in eval mode on `device`.

    optimize: apply the exact inference rewrites (models/inference.py); False keeps the original blocks;
    prepack: with them, oneDNN-prepacked weights (CPU float32).
    """
    # Built on the meta device and allocated uninitialised: no random initialisation that the checkpoint
    # overwrites anyway. The checkpoint is memory-mapped; releasing it unmaps the file.
    with torch.device("meta"):
        kp_detector = build_keypoint_detector(config["model_params"])
        generator = build_generator(config["model_params"], align_corners=align_corners)
    kp_detector.to_empty(device=device)
    generator.to_empty(device=device)
    load_state(kp_detector, checkpoint["kp_detector"], "kp_detector", path)
    load_state(generator, checkpoint["generator"], "generator", path)
    if generator.dense_motion_network is None:
        raise BadCheckpoint(f"{path}: a generator without a dense motion network cannot animate")
    kp_detector.eval()
    generator.eval()
    if optimize:
        kp_detector = optimize_for_inference(kp_detector, inplace=True, prepack=prepack)
        generator = optimize_for_inference(generator, inplace=True, prepack=prepack)
    return kp_detector, generator


def compile_networks(kp_detector, generator):
    """torch.compile, in place, the four functions the Animator runs per driving batch: the keypoint
    detector, the dense motion network, the warping of the source features and the decoder. (Compiling
    the generator module itself would compile only its forward, which animation does not call.)"""
    silence_cuda_home_warning()
    kp_detector.forward = CompiledOrEager(kp_detector.forward, "keypoint detector")
    dense_motion = generator.dense_motion_network
    dense_motion.motion = CompiledOrEager(dense_motion.motion, "dense motion network")
    generator.animate_features = CompiledOrEager(generator.animate_features, "feature warping")
    generator.decode = CompiledOrEager(generator.decode, "decoder")


class Animator:
    """Animates one source image with batches of driving frames.

    Everything that depends on the source alone (its keypoints, encoder features, downsampled copy and
    heatmaps) is computed once in `__init__`; each call to `animate` runs the keypoint detector on the
    driving batch, the dense motion network and the generator's decoder.
    """

    MODES = ("relative", "absolute")

    def __init__(self, kp_detector, generator, source, mode="relative", adapt_scale=True, precision="fp32"):
        if mode == "avd":
            raise FomError("--mode avd needs a Thin-Plate Spline Motion Model checkpoint (with its AVD network); "
                           "FOMM models animate in relative or absolute mode")
        if mode not in self.MODES:
            raise ValueError(f"unknown animation mode '{mode}': use relative or absolute")
        self.kp_detector = kp_detector
        self.generator = generator
        self.mode = mode
        self.adapt_scale = adapt_scale
        self.device = next(generator.parameters()).device
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        # The source's side in float32 whatever the precision: it is computed once, and its rounding would
        # be in every frame.
        with torch.inference_mode():
            self.source = to_tensor(source, self.device)
            self.kp_source = self.detect(self.source)
            self.source_features = generator.encode(self.source)
            self.source_for_motion = generator.dense_motion_network.prepare_source(self.source, self.kp_source)
        self.kp_driving_initial = None
        self.scale = 1.0
        # On a CPU the decoder runs one frame at a time: the deep levels of the keypoint detector and the
        # dense motion network (large weights over few pixels) gain from a batch, but the decoder's
        # full-resolution convolutions lose to it, as a frame's feature maps (4 MB for vox-256) stay in
        # the L2 caches and a batch's do not. None: the whole batch at once.
        self.decode_batch_size = 1 if self.device.type == "cpu" else None

    def autocast(self):
        """Reduced precision for the convolutions; keypoints, jacobian inverses and sampling grids stay
        float32 (see detect and blocks.grid_sample)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def detect(self, images):
        return {key: value.float() for key, value in self.kp_detector(images).items()}

    def keypoints(self, frames):
        with torch.inference_mode(), self.autocast():
            return self.detect(to_tensor(frames, self.device))

    def set_initial_frame(self, frame):
        """The driving frame whose pose corresponds to the source's: motion is measured from it."""
        self.kp_driving_initial = self.keypoints(frame)
        if self.mode == "relative" and self.adapt_scale:
            self.scale = movement_scale(self.kp_source, self.kp_driving_initial)

    def driving_keypoints(self, kp_driving):
        if self.mode == "absolute":
            return kp_driving
        return relative_motion(self.kp_source, kp_driving, self.kp_driving_initial, self.scale)

    def animate(self, frames, kp_driving=None):
        """(N, H, W, 3) float32 driving frames -> (N, H, W, 3) float32 predictions in [0, 1].

        kp_driving: the frames' keypoints (`keypoints(frames)`) when already known, as when several source
        faces follow the same driving frames (`fom animate --all-faces`)."""
        if self.mode == "relative" and self.kp_driving_initial is None:
            self.set_initial_frame(frames[0])
        with torch.inference_mode(), self.autocast():
            kp_driving = self.detect(to_tensor(frames, self.device)) if kp_driving is None else kp_driving
            kp_moved = self.driving_keypoints(kp_driving)
            motion = self.generator.dense_motion_network.motion(self.source_for_motion, kp_moved)
            features = self.generator.animate_features(self.source_features, motion)
            warped_source = None
            if self.generator.blend_mask is not None:
                warped_source = self.generator.warp_source(self.source, motion["deformation"])
            step = self.decode_batch_size or len(features)
            decoded = []
            for i in range(0, len(features), step):
                warped = None if warped_source is None else warped_source[i:i + step]
                decoded.append(self.generator.decode(features[i:i + step], warped).float())
            prediction = torch.cat(decoded)
        self.last_keypoints = {"source": self.kp_source["value"][0].cpu().numpy(),
                               "driving": kp_driving["value"].cpu().numpy(),
                               "moved": kp_moved["value"].cpu().numpy()}
        return prediction.permute(0, 2, 3, 1).cpu().numpy()

    def animate_all(self, frames, batch_size):
        """A whole in-memory clip, `batch_size` frames per forward pass (files stream through `animate`)."""
        return np.concatenate([self.animate(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])


