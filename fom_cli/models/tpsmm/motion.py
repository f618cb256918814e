"""TpsDenseMotionNetwork: keypoints -> a dense flow and multi-resolution occlusion masks.

Every group of 5 driving keypoints and the matching source keypoints define a thin-plate spline from
driving-frame coordinates to source coordinates; with the background's motion (the identity, or an
affine transform from BgMotionPredictor) that makes num_tps + 1 candidate flows. An hourglass looks at
the source warped by each candidate and at the keypoints' Gaussian heatmaps, and predicts per-pixel
softmax weights (the paper's contribution maps) that blend the candidates into one flow (Eq. 6), plus
occlusion masks at four resolutions for the inpainting network's four feature levels (multi_mask, as in
every released model; otherwise one mask, resized for each level).

Everything here runs at a reduced resolution (`scale_factor`, 1/4 for the released models); the finer
occlusion masks come from further up-sampling blocks, up to the frame's full resolution.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import (AntiAliasInterpolation2d, Hourglass, UpBlock2d, full_precision, grid_sample,
                                   keypoint_heatmaps, make_coordinate_grid, output_head)
from fom_cli.models.tpsmm.keypoints import POINTS_PER_TPS
from fom_cli.models.tpsmm.tps import keypoint_splines

# One occlusion mask per inpainting level (the original fixes four: three down blocks and the input).
NUM_OCCLUSION_MASKS = 4


def background_motion(grid, bg_param):
    """The identity grid (h, w, 2) moved by (N, 3, 3) affine matrices acting on (x, y, 1)."""
    homogeneous = torch.cat([grid, grid.new_ones(*grid.shape[:-1], 1)], dim=-1)
    moved = torch.matmul(bg_param.view(-1, 1, 1, 3, 3), homogeneous.unsqueeze(-1)).squeeze(-1)
    return moved[..., :2] / moved[..., 2:3]


def dropout_softmax(logits, p):
    """Softmax over dim 1 that drops each TPS map (never the background, channel 0) with probability p,
    per image: training's TPS dropout (the paper's Eq. 7 and 8).

    The original also divides the logits by 1 - p, but after taking their exponentials, so that has no
    effect and is left out here.
    """
    n, channels = logits.shape[:2]
    # Drawn on the CPU, as the original does, so a seeded run draws the same maps on any device.
    keep = (torch.rand(n, channels) < 1 - p).to(device=logits.device, dtype=logits.dtype)
    keep[:, 0] = 1
    exponentials = (logits - logits.max(dim=1, keepdim=True).values).exp() * keep.view(n, channels, 1, 1)
    return exponentials / (exponentials.sum(dim=1, keepdim=True) + 1e-6)


class TpsDenseMotionNetwork(nn.Module):
    def __init__(self, block_expansion, num_blocks, max_features, num_tps, num_channels, scale_factor=0.25,
                 multi_mask=True, kp_variance=0.01):
        super().__init__()
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)
        self.scale_factor = scale_factor
        self.num_tps = num_tps
        self.kp_variance = kp_variance
        self.multi_mask = multi_mask

        # Input: the keypoint heatmap differences (one per keypoint, plus an empty one for the background)
        # and the source warped by each of the num_tps + 1 candidate flows.
        self.hourglass = Hourglass(block_expansion=block_expansion,
                                   in_features=num_channels * (num_tps + 1) + num_tps * POINTS_PER_TPS + 1,
                                   max_features=max_features, num_blocks=num_blocks, norm=nn.InstanceNorm2d)
        level_filters = self.hourglass.level_filters
        self.maps = nn.Conv2d(level_filters[-1], num_tps + 1, kernel_size=(7, 7), padding=(3, 3))

        if multi_mask:
            # Masks from the hourglass's last levels, then from up-sampling blocks above its output up to
            # the full resolution, each halving the channels: 4 masks in all.
            self.num_up_blocks = int(math.log2(1 / scale_factor))
            self.num_level_masks = NUM_OCCLUSION_MASKS - self.num_up_blocks
            if not 0 <= self.num_level_masks <= len(level_filters):
                raise ValueError(f"scale_factor {scale_factor} with {num_blocks} hourglass blocks cannot give "
                                 f"{NUM_OCCLUSION_MASKS} occlusion masks")
            up_filters = [level_filters[-1] // 2 ** i for i in range(self.num_up_blocks + 1)]
            self.up = nn.ModuleList(UpBlock2d(up_filters[i], up_filters[i + 1], norm=nn.InstanceNorm2d)
                                    for i in range(self.num_up_blocks))
            mask_filters = level_filters[len(level_filters) - self.num_level_masks:] + up_filters[1:]
        else:
            mask_filters = level_filters[-1:]
        self.occlusion = nn.ModuleList(nn.Conv2d(filters, 1, kernel_size=(7, 7), padding=(3, 3))
                                       for filters in mask_filters)

    def downsample(self, image):
        return self.down(image) if self.scale_factor != 1 else image

    def prepare_source(self, source_image, kp_source):
        """What depends on the source alone: its downsampled copy, keypoints and keypoint heatmaps. An
        animation computes this once and reuses it for every driving frame."""
        small_source = self.downsample(source_image)
        h, w = small_source.shape[2:]
        return {"image": small_source, "kp": kp_source,
                "heatmaps": keypoint_heatmaps(kp_source, h, w, self.kp_variance)}

    def fit_splines(self, kp_driving, kp_source):
        """The thin-plate splines from driving keypoints (N, 5 * num_tps, 2) to source keypoints (batch 1 or
        N), in float32 also under autocast (see candidate_flows)."""
        with torch.autocast(kp_driving.device.type, enabled=False):
            kp_driving, kp_source = full_precision(kp_driving), full_precision(kp_source)
            return keypoint_splines(kp_driving, kp_source)

    def candidate_flows(self, height, width, kp_driving, kp_source, bg_param=None, splines=None):
        """(N, num_tps + 1, h, w, 2): for the background and each thin-plate spline, where each
        driving-frame pixel comes from in the source. kp_source: batch 1 or N. splines: fit_splines's result
        when already solved (an ONNX graph gets them as inputs: the exporters take no matrix inverse).

        Always float32, also under autocast: GPUs have no half-precision matrix inverse, and half-precision
        coordinates would be off by pixels."""
        with torch.autocast(kp_driving.device.type, enabled=False):
            kp_driving = full_precision(kp_driving)
            n = kp_driving.shape[0]
            grid = make_coordinate_grid(height, width, kp_driving.device, kp_driving.dtype)
            if splines is None:
                splines = self.fit_splines(kp_driving, kp_source)
            spline_flows = splines.warp(grid.view(-1, 2)).view(n, self.num_tps, height, width, 2)
            if bg_param is None:
                background = grid.expand(n, 1, height, width, 2)
            else:
                background = background_motion(grid, full_precision(bg_param)).unsqueeze(1)
            return torch.cat([background, spline_flows], dim=1)

    @staticmethod
    def warp_by_each_flow(small_source, flows):
        """(N, F, C, h, w): the downsampled source (batch 1 or N) warped by each of F flows."""
        n, num_flows, h, w, _ = flows.shape
        channels = small_source.shape[1]
        source = small_source.unsqueeze(1).expand(n, num_flows, channels, h, w).reshape(n * num_flows, channels, h, w)
        warped = grid_sample(source, flows.reshape(n * num_flows, h, w, 2), align_corners=True)
        return warped.view(n, num_flows, channels, h, w)

    def occlusion_masks(self, levels):
        """Sigmoid masks, coarsest first: from the hourglass's last levels, then from the up-sampling
        blocks (multi_mask); or the one mask at the hourglass's resolution."""
        if not self.multi_mask:
            return [torch.sigmoid(output_head(self.occlusion[0], levels[-1]))]
        features = levels[len(levels) - self.num_level_masks:]
        out = levels[-1]
        for block in self.up:
            out = block(out)
            features.append(out)
        return [torch.sigmoid(output_head(conv, feature)) for conv, feature in zip(self.occlusion, features)]

    def motion(self, source, kp_driving, bg_param=None, dropout_p=0.0, splines=None):
        """source: prepare_source's dict (batch 1 or N); kp_driving (N, 5 * num_tps, 2); splines: solved
        already (candidate_flows).

        bg_param: (N, 3, 3) background motion from BgMotionPredictor (training), None for the identity.
        dropout_p: training's TPS dropout probability; 0 for a plain softmax.
        Returns {'deformed_source' (N, num_tps + 1, C, h, w), 'contribution_maps' (N, num_tps + 1, h, w),
        'deformation' (N, h, w, 2), 'occlusion_maps' [(N, 1, h_i, w_i)], coarsest first}.
        """
        n = kp_driving.shape[0]
        h, w = source["image"].shape[2:]

        # Driving minus source Gaussian heatmaps, with an empty map for the background first.
        heatmaps = keypoint_heatmaps(kp_driving, h, w, self.kp_variance) - source["heatmaps"]
        heatmaps = torch.cat([heatmaps.new_zeros(n, 1, h, w), heatmaps], dim=1)
        flows = self.candidate_flows(h, w, kp_driving, source.get("kp"), bg_param, splines)
        deformed_source = self.warp_by_each_flow(source["image"], flows)

        levels = self.hourglass.levels(torch.cat([heatmaps, deformed_source.view(n, -1, h, w)], dim=1))
        logits = output_head(self.maps, levels[-1])
        if dropout_p:
            contribution_maps = dropout_softmax(logits, dropout_p)
        else:
            contribution_maps = F.softmax(logits, dim=1)
        deformation = (flows * contribution_maps.unsqueeze(-1)).sum(dim=1)
        return {"deformed_source": deformed_source, "contribution_maps": contribution_maps,
                "deformation": deformation, "occlusion_maps": self.occlusion_masks(levels)}

    def forward(self, source_image, kp_driving, kp_source, bg_param=None, dropout_p=0.0):
        """The straightforward path: source image (1 or N, C, H, W), keypoints with batch N."""
        return self.motion(self.prepare_source(source_image, kp_source), kp_driving, bg_param, dropout_p)
