"""TPSMM's keypoint detector, and how driving keypoints become the keypoints an animation uses.

Unlike FOMM's heatmap detector, TPSMM regresses its keypoints directly: a ResNet-18 maps the image to
5 * num_tps (x, y) pairs in [-1, 1], one group of 5 per thin-plate spline. Keypoints are plain tensors
(N, 5 * num_tps, 2) in the coordinates of `make_coordinate_grid` (-1 and +1 are the first and last pixel
centres).
"""

import math

import torch
import torchvision
from torch import nn

from fom_cli.models.keypoints import convex_hull_area

# Each thin-plate spline is fitted to this many keypoints.
POINTS_PER_TPS = 5
ANIMATION_MODES = ("standard", "relative", "avd")


class TpsKeypointDetector(nn.Module):
    def __init__(self, num_tps):
        super().__init__()
        self.num_tps = num_tps
        # Random initialisation (the original's pretrained=False): the checkpoint holds every weight.
        self.fg_encoder = torchvision.models.resnet18(weights=None, num_classes=num_tps * POINTS_PER_TPS * 2)

    def forward(self, image):
        """(N, 3, H, W) in [0, 1] -> keypoints (N, 5 * num_tps, 2) in [-1, 1]."""
        logits = self.fg_encoder(image)
        # 2 sigmoid - 1 (= tanh(logits / 2)), computed as the original does.
        return (torch.sigmoid(logits) * 2 - 1).view(logits.shape[0], self.num_tps * POINTS_PER_TPS, 2)


def movement_scale(kp_source, kp_driving_initial):
    """sqrt(source hull area) / sqrt(driving hull area) of the first image of each batch: how much bigger
    the source's keypoint cloud is than the driving video's (1 when the driving cloud is degenerate)."""
    source_area = convex_hull_area(kp_source[0].detach().cpu().numpy())
    driving_area = convex_hull_area(kp_driving_initial[0].detach().cpu().numpy())
    if driving_area == 0:
        return 1.0
    return math.sqrt(source_area) / math.sqrt(driving_area)


def relative_keypoints(kp_source, kp_driving, kp_driving_initial, scale=None):
    """The source keypoints moved by the driving keypoints' motion since the initial driving frame, scaled
    by `scale` (default: movement_scale, as the original demo's relative_kp always does).

    kp_driving may hold a batch of frames; kp_source and kp_driving_initial have batch 1.
    """
    if scale is None:
        scale = movement_scale(kp_source, kp_driving_initial)
    return (kp_driving - kp_driving_initial) * scale + kp_source


def animation_keypoints(mode, kp_source, kp_driving, kp_driving_initial=None, avd_network=None):
    """The keypoints that drive the source in each of the original demo's modes:

    standard  the driving keypoints as they are (the source takes the driving frame's pose and shape);
    relative  relative_keypoints (the source keeps its shape and borrows the motion);
    avd       the AVD network's blend of the source's identity and the driving pose.
    """
    if mode == "standard":
        return kp_driving
    if mode == "relative":
        if kp_driving_initial is None:
            raise ValueError("relative motion needs the initial driving frame's keypoints")
        return relative_keypoints(kp_source, kp_driving, kp_driving_initial)
    if mode == "avd":
        if avd_network is None:
            raise ValueError("avd mode needs the AVD network")
        return avd_network(kp_source, kp_driving)
    raise ValueError(f"unknown animation mode '{mode}': use one of {', '.join(ANIMATION_MODES)}")
