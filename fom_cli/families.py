"""The two model families behind one interface: a checkpoint's contents say which family it is, and the
family says how its networks load, compile and animate.

    FOMM   (animation.py)        keypoints with local affine motion; Animator
    TPSMM  (animation_tpsmm.py)  thin-plate spline motion; TpsAnimator

Both animators have one protocol: built on a source image (its side computed once), set_initial_frame(frame),
keypoints(frames), animate(frames, kp_driving=None) -> predictions, and last_keypoints for drawing. Everything
above this module (the engine, reconstruction, evaluation, bench) animates either without asking which.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fom_cli.animation import Animator, compile_networks, load_fomm_networks
from fom_cli.animation_tpsmm import TPSMM_MODES, TpsAnimator, compile_tps_networks, load_tps_networks
from fom_cli.checkpoint import checkpoint_family, infer_config, read_checkpoint
from fom_cli.config import config_family, config_name
from fom_cli.errors import BadCheckpoint, FomError
from fom_cli.media.files import file_sha256


@dataclass(frozen=True)
class Family:
    name: str
    load: Callable      # (checkpoint dict, config, path, device, optimize, prepack, align_corners) -> networks
    compile: Callable   # (kp_detector, generator): torch.compile what runs per driving batch, in place
    animator: type      # (kp_detector, generator, source, mode, adapt_scale, precision)
    modes: tuple        # the --mode values it animates in


# Keyed by checkpoint.checkpoint_family(checkpoint): what the checkpoint's keys say it is.
FAMILIES = {
    "fomm": Family("fomm", load_fomm_networks, compile_networks, Animator, Animator.MODES),
    "tpsmm": Family("tpsmm", load_tps_networks, compile_tps_networks, TpsAnimator, TPSMM_MODES),
}


@dataclass
class Networks:
    """What load_networks gives: the config, the keypoint detector and the generator (for TPSMM a TpsModel:
    its inpainting, dense motion and AVD networks), the family, and a note on how the config was chosen."""

    config: dict
    kp_detector: torch.nn.Module
    generator: torch.nn.Module
    family: Family
    note: str = None
    checkpoint: object = None   # the file they were loaded from (None: made in memory)
    name: str = None            # what the user called them (a released model's name), for the outputs' marks

    @property
    def device(self):
        return next(self.generator.parameters()).device

    @property
    def has_avd_network(self):
        return getattr(self.generator, "avd_network", None) is not None

    def identity(self):
        """The model, as the outputs' marks name it: its name and its checkpoint's sha256 (computed once)."""
        if not hasattr(self, "_identity"):
            self._identity = model_identity(self.name or (Path(self.checkpoint).name if self.checkpoint else None),
                                            self.checkpoint, self.config)
        return self._identity

    def animator(self, source, mode="relative", adapt_scale=True, precision="fp32"):
        """The family's animator for one source image (float [0, 1] or uint8, H x W x 3, the model's size)."""
        return self.family.animator(self.kp_detector, self.generator, source, mode=mode, adapt_scale=adapt_scale,
                                    precision=precision)


def model_identity(name, checkpoint, config, digest=None):
    """"NAME (sha256 HEX)": a checkpoint named by the user's name for it, else by its file name, else by its
    config; the digest of the file (or the one given)."""
    if digest is None and checkpoint is not None and Path(checkpoint).is_file():
        digest = file_sha256(checkpoint)
    label = name or f"config {config_name(config)}"
    return f"{label} (sha256 {digest})" if digest else label


def load_networks(checkpoint_path, config=None, align_corners=None, device="cpu", optimize=True, precision="fp32",
                  compile=False):
    """Networks from a checkpoint file of either family, in eval mode on `device`.

    config None: the checkpoint's own config, or the bundled one whose tensor shapes match.
    optimize: apply the exact inference rewrites; False keeps the original blocks.
    precision: what the animator will run in; CPU float32 gets oneDNN-prepacked weights.
    compile: torch.compile what runs per driving batch.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    note = None
    if config is None:
        config, note = infer_config(checkpoint, checkpoint_path)
    family = FAMILIES[checkpoint_family(checkpoint)]
    if config_family(config) != family.name:
        raise BadCheckpoint(f"{checkpoint_path} is a {family.name.upper()} checkpoint, but config "
                            f"{config_name(config)} is a {config_family(config).upper()} one")
    # oneDNN's prepacked ops are opaque to torch.compile: compiled CPU code gets plain convolutions.
    prepack = optimize and torch.device(device).type == "cpu" and precision == "fp32" and not compile
    kp_detector, generator = family.load(checkpoint, config, checkpoint_path, device, optimize, prepack,
                                         align_corners)
    del checkpoint  # memory-mapped: releasing it unmaps the file
    if compile:
        family.compile(kp_detector, generator)
    return Networks(config, kp_detector, generator, family, note, checkpoint=checkpoint_path)


def check_animation_mode(networks, mode, checkpoint="the checkpoint"):
    """FomError, before any work, for a --mode the networks cannot animate in."""
    if mode in networks.family.modes and not (mode == "avd" and not networks.has_avd_network):
        return
    if mode == "avd" and networks.family.name == "tpsmm":
        raise FomError(f"--mode avd needs the AVD network, and {checkpoint} has no avd_network; use --mode "
                       "relative or absolute")
    raise FomError(f"--mode {mode} needs a Thin-Plate Spline Motion Model checkpoint (with its AVD network); "
                   f"{networks.family.name.upper()} models animate in {' or '.join(networks.family.modes)} mode")
