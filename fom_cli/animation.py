"""Animation: keypoint motion transfer and the Animator that renders driving frames in batches.

Relative motion (the paper's default): the driving video's keypoint motion since its first frame (or
the chosen start frame) is applied to the source's keypoints, so the source keeps its own shape and only
borrows the motion. Absolute motion uses the driving keypoints as they are (the reconstruction protocol:
source and driving are the same object). Adapt-scale multiplies relative displacements by the ratio of
the two keypoint clouds' sizes (square roots of their convex-hull areas).

Thin-Plate Spline Motion Model checkpoints load through the same load_model and animate with
animation_tpsmm.TpsAnimator, which has the Animator's interface; `animator_class` picks the one for a model.
"""

import contextlib
import importlib
import io
import logging
import warnings

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from fom_cli.checkpoint import checkpoint_family, infer_config, load_state, read_checkpoint
from fom_cli.config import config_family, config_name
from fom_cli.errors import BadCheckpoint, FomError
from fom_cli.models import build_generator, build_keypoint_detector
from fom_cli.models.blocks import full_precision
from fom_cli.models.inference import optimize_for_inference


# --precision name -> the dtype networks autocast to (None: plain float32).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def convex_hull_area(points):
    """Area of the convex hull of (M, 2) points, as the original demo computes it (scipy's ConvexHull).
    0 for a degenerate set: fewer than 3 distinct points, or all of them on one line."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:  # Qhull needs 3 (and for none at all raises ValueError, not QhullError)
        return 0.0
    try:
        return float(ConvexHull(points).volume)  # a 2-D hull's "volume" is its area
    except QhullError:  # points all on one line or one point: Qhull refuses a flat set instead of answering 0
        return 0.0


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


def pick_device(name="auto"):
    """The torch device for --device NAME, checked before anything is loaded onto it: FomError (one line)
    for a name torch does not know, or a device this machine does not have."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise FomError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FomError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FomError(f"--device {name}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                           f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise FomError(f"--device {name}: Apple's MPS is not available on this machine (use --device cpu)")
        return device
    raise FomError(f"--device {name}: fom runs on cpu, cuda or mps, not {device.type}")


def default_batch_size(device):
    """Driving frames per forward pass. GPUs need large batches to fill up (README: measured speeds); on a
    CPU the keypoint detector and the dense motion network still gain from 8 (see Animator for the
    decoder)."""
    return 32 if torch.device(device).type == "cuda" else 8


def load_model(checkpoint_path, config=None, align_corners=None, device="cpu", optimize=True, precision="fp32",
               compile=False):
    """(config, keypoint detector, generator, note) from a checkpoint, in eval mode on `device`.

    config None: the checkpoint's own config, or the bundled one whose tensor shapes match.
    optimize: apply the exact inference rewrites (models/inference.py); False keeps the original blocks.
    precision: what the Animator will run in; CPU float32 gets oneDNN-prepacked weights.
    compile: torch.compile what runs per driving batch (compile_networks).

    A TPSMM checkpoint gives its keypoint detector and, in the generator's place, an animation_tpsmm.TpsModel
    (animator_class(generator) animates either).
    """
    checkpoint = read_checkpoint(checkpoint_path)
    note = None
    if config is None:
        config, note = infer_config(checkpoint, checkpoint_path)
    family = checkpoint_family(checkpoint)
    if config_family(config) != family:
        raise BadCheckpoint(f"{checkpoint_path} is a {family.upper()} checkpoint, but config {config_name(config)} "
                            f"is a {config_family(config).upper()} one")
    if family == "tpsmm":
        from fom_cli.animation_tpsmm import compile_tps_networks, load_tps_networks

        if align_corners is False:
            raise FomError("--align-corners false: TPSMM models always sample with align_corners=True")
        # oneDNN's prepacked ops are opaque to torch.compile: compiled CPU code gets plain convolutions.
        prepack = torch.device(device).type == "cpu" and precision == "fp32" and not compile
        kp_detector, model = load_tps_networks(checkpoint, config, checkpoint_path, device, optimize, prepack)
        del checkpoint
        if compile:
            compile_tps_networks(kp_detector, model)
        return config, kp_detector, model, note
    # Built on the meta device and allocated uninitialised: no random initialisation that the checkpoint
    # overwrites anyway. The checkpoint is memory-mapped; releasing it unmaps the file.
    with torch.device("meta"):
        kp_detector = build_keypoint_detector(config["model_params"])
        generator = build_generator(config["model_params"], align_corners=align_corners)
    kp_detector.to_empty(device=device)
    generator.to_empty(device=device)
    load_state(kp_detector, checkpoint["kp_detector"], "kp_detector", checkpoint_path)
    load_state(generator, checkpoint["generator"], "generator", checkpoint_path)
    del checkpoint
    if generator.dense_motion_network is None:
        raise BadCheckpoint(f"{checkpoint_path}: a generator without a dense motion network cannot animate")
    kp_detector.eval()
    generator.eval()
    if optimize:
        # oneDNN's prepacked ops are opaque to torch.compile: compiled CPU code gets plain convolutions.
        prepack = torch.device(device).type == "cpu" and precision == "fp32" and not compile
        kp_detector = optimize_for_inference(kp_detector, inplace=True, prepack=prepack)
        generator = optimize_for_inference(generator, inplace=True, prepack=prepack)
    if compile:
        compile_networks(kp_detector, generator)
    return config, kp_detector, generator, note


def animator_class(generator):
    """Animator for a FOMM generator, animation_tpsmm.TpsAnimator for a TPSMM model (what load_model gave):
    both take (kp_detector, generator, source, mode, adapt_scale, precision)."""
    from fom_cli.animation_tpsmm import TpsAnimator, TpsModel

    return TpsAnimator if isinstance(generator, TpsModel) else Animator


def check_animation_mode(generator, mode, checkpoint="the checkpoint"):
    """FomError, before any work, for a --mode the model cannot animate in: avd needs a TPSMM checkpoint with
    an avd_network."""
    if mode != "avd":
        return
    from fom_cli.animation_tpsmm import TpsModel

    if not isinstance(generator, TpsModel):
        raise FomError("--mode avd needs a Thin-Plate Spline Motion Model checkpoint (with its AVD network); "
                       "FOMM models animate in relative or absolute mode")
    if generator.avd_network is None:
        raise FomError(f"--mode avd needs the AVD network, and {checkpoint} has no avd_network; use --mode "
                       "relative or absolute")


class CompiledOrEager:
    """`torch.compile(function)`, or the plain function once compiling it has failed.

    torch.compile returns at once and only finds out at the first call whether it can compile (a missing
    C++ compiler, an unsupported op, an old GPU), so the fallback has to happen there, with one warning.
    """

    def __init__(self, function, name, backend="inductor"):
        self.function = function
        self.name = name
        self.compiled = torch.compile(function, backend=backend)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - whatever broke, the plain function still works
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed for the {self.name} ({type(error).__name__}: {reason}); "
                              "running it uncompiled")
                self.compiled = None
        return self.function(*args, **kwargs)


def silence_cuda_home_warning():
    """Compiling imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on machines that
    have a CUDA toolkit but no GPU: nothing fom does needs that runtime, so the line would only confuse."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):  # torch before 2.5 prints the line instead of logging it
        importlib.import_module("torch.utils.cpp_extension")


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


def to_tensor(frames, device):
    """(N, H, W, 3) or (H, W, 3) float32 [0, 1] numpy -> (N, 3, H, W) tensor."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    tensor = torch.from_numpy(frames)
    if torch.device(device).type == "cuda":
        # Page-locked memory: the copy to the GPU is one DMA transfer instead of two staged copies.
        return tensor.pin_memory().to(device, non_blocking=True).permute(0, 3, 1, 2)
    return tensor.permute(0, 3, 1, 2).to(device)


class Animator:
    """Animates one source image with batches of driving frames.

    Everything that depends on the source alone (its keypoints, encoder features, downsampled copy and
    heatmaps) is computed once in `__init__`; each call to `animate` runs the keypoint detector on the
    driving batch, the dense motion network and the generator's decoder.
    """

    def __init__(self, kp_detector, generator, source, mode="relative", adapt_scale=True, precision="fp32"):
        check_animation_mode(generator, mode)
        if mode not in ("relative", "absolute"):
            raise ValueError(f"unknown animation mode '{mode}': use relative or absolute")
        self.kp_detector = kp_detector
        self.generator = generator
        self.mode = mode
        self.adapt_scale = adapt_scale
        self.device = next(generator.parameters()).device
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        with torch.inference_mode(), self.autocast():
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


