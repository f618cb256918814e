"""Animation with the Thin-Plate Spline Motion Model: TpsModel (its networks as one module) and TpsAnimator,
which renders driving frames in batches with the interface of animation.Animator, so that everything built
on the Animator (streaming, --find-best-frame, --side-by-side, reconstruction) works with either family.

What the original demo.make_animation computes per driving frame, reorganised: the source's keypoints, the
inpainting network's encoding of the source and the dense motion network's source side (downsampled image
and keypoint heatmaps) once per source image; per driving batch the keypoint detector, the animation
keypoints of the mode, the dense motion network and the inpainting decoder.

Modes (fom's names; the original demo's in brackets):
  relative  [relative] the driving keypoints' motion since the initial frame, applied to the source's
            keypoints; adapt-scale multiplies it by the size ratio of the two keypoint clouds (the original
            always does)
  absolute  [standard] the driving keypoints as they are
  avd       [avd] the AVD network's keypoints: the source's identity in each driving frame's pose
"""

import contextlib

import numpy as np
import torch
from torch import nn

from fom_cli.checkpoint import load_state
from fom_cli.errors import FomError
from fom_cli.models.tpsmm import build_tpsmm_networks, movement_scale, relative_keypoints
from fom_cli.models.tpsmm.inference import optimize_tps_for_inference
from fom_cli.runtime import AUTOCAST_DTYPES, CompiledOrEager, silence_cuda_home_warning, to_tensor

# --mode name -> what the keypoints are; "absolute" is the original demo's "standard".
TPSMM_MODES = ("relative", "absolute", "avd")


def frames_to_tensor(frames, device):
    """(N, H, W, 3) or (H, W, 3) float32 [0, 1] numpy -> (N, 3, H, W) tensor, laid out as the original demo's
    inputs: a single frame gets a batch dimension with a real stride (numpy's [None] gives stride 0, which
    sends the keypoint detector's first convolution down another path, 2e-7 off; AVD keypoints amplify that
    to 4e-4 in the frames of the parity fixture's random-weight model)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = np.expand_dims(frames, 0)
    return to_tensor(frames, device)


class TpsModel(nn.Module):
    """The networks that animate, as one module: what load_model returns in place of FOMM's generator.

    avd_network is None when the checkpoint has none (then --mode avd cannot run); bg_predictor is None
    unless the checkpoint and the config have one (only reconstruction uses it, as the original's does).
    """

    def __init__(self, inpainting_network, dense_motion_network, avd_network=None, bg_predictor=None):
        super().__init__()
        self.inpainting_network = inpainting_network
        self.dense_motion_network = dense_motion_network
        self.avd_network = avd_network
        self.bg_predictor = bg_predictor


def load_tps_networks(checkpoint, config, path, device="cpu", optimize=True, prepack=False, align_corners=None):
    """(keypoint detector, TpsModel) from a TPSMM checkpoint dict, in eval mode on `device`.

    Every network the checkpoint and the config both have is loaded and checked tensor by tensor: the
    avd_network when the checkpoint has one, the bg_predictor when the config has bg: True (the original
    demo skips it, its reconstruction uses it). Optimiser states are never read (the file is memory-mapped).
    optimize: apply the exact inference rewrites to the dense motion and inpainting networks
    (models/tpsmm/inference.py; FOMM's BatchNorm folding does not apply: they normalise by instance);
    prepack: with them, oneDNN-prepacked weights (CPU float32).
    """
    if align_corners is False:
        raise FomError("--align-corners false: TPSMM models always sample with align_corners=True")
    # Built on the meta device and allocated uninitialised, as load_fomm_networks does.
    with torch.device("meta"):
        networks = build_tpsmm_networks(config["model_params"])
    for name in ("avd_network", "bg_predictor"):
        if name in networks and name not in checkpoint:
            del networks[name]
    for name, network in networks.items():
        network.to_empty(device=device)
        load_state(network, checkpoint[name], name, path)
        network.eval()
    model = TpsModel(networks["inpainting_network"], networks["dense_motion_network"], networks.get("avd_network"),
                     networks.get("bg_predictor"))
    if optimize:
        optimize_tps_networks(networks["kp_detector"], model, prepack=prepack)
    return networks["kp_detector"], model


def optimize_tps_networks(kp_detector, model, prepack=False, portable=False):
    """The exact inference rewrites, in place: the dense motion and inpainting networks rewritten
    (optimize_tps_for_inference), the keypoint detector's BatchNorms folded and its layout channels_last."""
    optimize_tps_for_inference(model.dense_motion_network, inplace=True, prepack=prepack, portable=portable)
    optimize_tps_for_inference(model.inpainting_network, inplace=True, prepack=prepack, portable=portable)
    fold_resnet_batchnorm(kp_detector.eval().fg_encoder)
    kp_detector.to(memory_format=torch.channels_last)


def fold_resnet_batchnorm(resnet):
    """A torchvision ResNet's eval-mode BatchNorms folded into the convolutions before them, in place (torch's
    own fuse_conv_bn_eval): the same function with one pass over each feature map fewer (20 of the 152
    normalisation passes of a batch of TPSMM frames; the others are the decoder's instance norms)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(resnet, "conv1", "bn1")]
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    with torch.no_grad():
        for parent, conv, norm in pairs:
            if isinstance(getattr(parent, norm), nn.BatchNorm2d):
                setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, norm)))
                setattr(parent, norm, nn.Identity())


def compile_tps_networks(kp_detector, model):
    """torch.compile, in place, what TpsAnimator runs per driving batch (see animation.compile_networks)."""
    silence_cuda_home_warning()
    kp_detector.forward = CompiledOrEager(kp_detector.forward, "keypoint detector")
    model.dense_motion_network.motion = CompiledOrEager(model.dense_motion_network.motion, "dense motion network")
    model.inpainting_network.decode = CompiledOrEager(model.inpainting_network.decode, "inpainting decoder")


class TpsAnimator:
    """Animates one source image with batches of driving frames, like animation.Animator.

    Keypoints are handed out as FOMM's are, {'value': (N, 5 * num_tps, 2)}, so that callers need not
    know the family. background: predict the background's motion between the source and every driving
    frame with the model's bg_predictor (the original's reconstruction does; its demo does not).
    """

    def __init__(self, kp_detector, generator, source, mode="relative", adapt_scale=True, precision="fp32",
                 background=False):
        if mode == "avd" and generator.avd_network is None:
            raise FomError("--mode avd needs the AVD network, and this checkpoint has no avd_network; use --mode "
                           "relative or absolute")
        if mode not in TPSMM_MODES:
            raise ValueError(f"unknown animation mode '{mode}': use one of {', '.join(TPSMM_MODES)}")
        if background and generator.bg_predictor is None:
            raise ValueError("background motion needs the model's bg_predictor")
        self.kp_detector = kp_detector
        self.generator = generator
        self.mode = mode
        self.adapt_scale = adapt_scale
        self.background = background
        self.device = next(generator.parameters()).device
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        # The source's side in float32 whatever the precision: it is computed once, and its rounding would
        # be in every frame (bf16 source features alone moved the parity model's frames by 80/255).
        with torch.inference_mode():
            self.source = frames_to_tensor(source, self.device)
            kp_source = self.detect(self.source)
            self.kp_source = {"value": kp_source}
            self.source_features = generator.inpainting_network.encode_source(self.source)
            self.source_for_motion = generator.dense_motion_network.prepare_source(self.source, kp_source)
            self.identity = None
            if mode == "avd":
                with self.full_precision():
                    self.identity = generator.avd_network.encode_identity(kp_source)
        self.kp_driving_initial = None
        self.scale = 1.0
        # On a CPU the inpainting decoder runs one frame at a time (as FOMM's Animator's decoder does): a
        # frame's feature maps stay in the caches, a batch's do not. None: the whole batch at once.
        self.decode_batch_size = 1 if self.device.type == "cpu" else None

    def autocast(self):
        """Reduced precision for the inpainting decoder's convolutions; keypoints and flows stay float32
        (see detect and animate)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def full_precision(self):
        """float32 also under autocast: for what outputs keypoints and flows (the detector, the AVD network,
        the dense motion network)."""
        return torch.autocast(self.device.type, enabled=False)

    def detect(self, images):
        """Keypoints in float32 also under autocast: TPSMM regresses them directly from the image, and
        bf16 rounding anywhere in the ResNet moves them (about 5% of a frame's FLOPs)."""
        with self.full_precision():
            return self.kp_detector(images).float()

    def keypoints(self, frames):
        """{'value': (N, 5 * num_tps, 2)} of (N, H, W, 3) float32 frames."""
        with torch.inference_mode(), self.autocast():
            return {"value": self.detect(frames_to_tensor(frames, self.device))}

    def set_initial_frame(self, frame):
        """The driving frame whose pose corresponds to the source's: relative motion is measured from it."""
        self.kp_driving_initial = self.keypoints(frame)["value"]
        if self.mode == "relative" and self.adapt_scale:
            self.scale = movement_scale(self.kp_source["value"], self.kp_driving_initial)

    def driving_keypoints(self, kp_driving):
        """The keypoints the source is animated with, in the animator's mode (float32)."""
        if self.mode == "absolute":
            return kp_driving
        with self.full_precision():
            if self.mode == "relative":
                return relative_keypoints(self.kp_source["value"], kp_driving, self.kp_driving_initial, self.scale)
            return self.generator.avd_network.decode(self.identity, kp_driving)

    def animate(self, frames, kp_driving=None):
        """(N, H, W, 3) float32 driving frames -> (N, H, W, 3) float32 predictions in [0, 1].

        kp_driving: the frames' keypoints (`keypoints(frames)`) when already known, as when several source
        faces follow the same driving frames (`fom animate --all-faces`)."""
        if self.mode == "relative" and self.kp_driving_initial is None:
            self.set_initial_frame(frames[0])
        with torch.inference_mode(), self.autocast():
            driving = frames_to_tensor(frames, self.device)
            kp_driving = self.detect(driving) if kp_driving is None else kp_driving["value"]
            kp_moved = self.driving_keypoints(kp_driving)
            bg_param = None
            if self.background:
                bg_param = self.generator.bg_predictor(self.source.expand(len(driving), -1, -1, -1), driving)
            # The dense motion network in float32 too: its contribution maps blend ten flows per pixel, and
            # bf16 there moved the parity model's frames by up to 46/255 (4.8 with it in float32). It is 6%
            # of a frame's FLOPs; the decoder (92%) keeps the reduced precision.
            with self.full_precision():
                motion = self.generator.dense_motion_network.motion(self.source_for_motion, kp_moved, bg_param)
            step = self.decode_batch_size or len(driving)
            decoded = []
            for i in range(0, len(driving), step):
                frames_motion = {"deformation": motion["deformation"][i:i + step],
                                 "occlusion_maps": [mask[i:i + step] for mask in motion["occlusion_maps"]]}
                decoded.append(self.generator.inpainting_network.decode(self.source_features, frames_motion)
                               ["prediction"].float())
            prediction = torch.cat(decoded)
        self.last_keypoints = {"source": self.kp_source["value"][0].cpu().numpy(),
                               "driving": kp_driving.cpu().numpy(), "moved": kp_moved.cpu().numpy()}
        return prediction.permute(0, 2, 3, 1).cpu().numpy()

    def animate_all(self, frames, batch_size):
        """A whole in-memory clip, `batch_size` frames per forward pass (files stream through `animate`)."""
        return np.concatenate([self.animate(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
