"""DenseMotionNetwork: sparse keypoint motion -> a dense flow field and an occlusion map.

Each keypoint k defines a local affine motion near it, from driving-frame coordinates z to source
coordinates: T_k(z) = kp_source_k + J_k (z - kp_driving_k), with J_k = J_source_k J_driving_k^-1 (the
paper's first-order Taylor expansion). Together with the identity (for the background) that gives K + 1
candidate flows. An hourglass looks at the source warped by each candidate and at the keypoint heatmaps,
and predicts a per-pixel softmax mask that blends the candidates into one dense flow, plus an occlusion
map telling the generator where the source has nothing to show.

Everything runs at a reduced resolution (`scale_factor`, 1/4 for the released models).
"""

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import (AntiAliasInterpolation2d, Hourglass, full_precision, grid_sample, inverse_2x2,
                                   keypoint_heatmaps, make_coordinate_grid, output_head)


class DenseMotionNetwork(nn.Module):
    def __init__(self, block_expansion, num_blocks, max_features, num_kp, num_channels,
                 estimate_occlusion_map=False, scale_factor=1, kp_variance=0.01, align_corners=True):
        super().__init__()
        self.hourglass = Hourglass(block_expansion=block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3))
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3))
        else:
            self.occlusion = None

        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        self.align_corners = align_corners
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def downsample(self, image):
        return self.down(image) if self.scale_factor != 1 else image

    def sparse_motions(self, height, width, kp_driving, kp_source):
        """(N, K + 1, h, w, 2): for each keypoint's affine motion (and the identity first), where each
        driving-frame pixel comes from in the source. Always float32, also under autocast: GPUs have no
        half-precision matrix inverse, and bf16 coordinates would be off by pixels."""
        with torch.autocast(kp_driving["value"].device.type, enabled=False):
            value_driving = full_precision(kp_driving["value"])
            n = value_driving.shape[0]
            identity = make_coordinate_grid(height, width, value_driving.device, value_driving.dtype)
            identity = identity.view(1, 1, height, width, 2)
            offsets = identity - value_driving.view(n, self.num_kp, 1, 1, 2)
            if "jacobian" in kp_driving:
                jacobian = torch.matmul(full_precision(kp_source["jacobian"]),
                                        inverse_2x2(full_precision(kp_driving["jacobian"])))
                offsets = torch.matmul(jacobian.view(-1, self.num_kp, 1, 1, 2, 2), offsets.unsqueeze(-1)).squeeze(-1)
            driving_to_source = offsets + full_precision(kp_source["value"]).view(-1, self.num_kp, 1, 1, 2)
            return torch.cat([identity.expand(n, 1, height, width, 2), driving_to_source], dim=1)

    def warp_by_each_motion(self, small_source, sparse_motions):
        """(N, K + 1, C, h, w): the downsampled source warped by every candidate motion."""
        n, num_motions, h, w, _ = sparse_motions.shape
        channels = small_source.shape[1]
        source = small_source.unsqueeze(1).expand(n, num_motions, channels, h, w).reshape(n * num_motions, channels, h, w)
        warped = grid_sample(source, sparse_motions.reshape(n * num_motions, h, w, 2), self.align_corners)
        return warped.view(n, num_motions, channels, h, w)

    def prepare_source(self, source_image, kp_source):
        """What depends on the source alone: its downsampled copy and keypoint heatmaps. An animation
        computes this once and reuses it for every driving frame."""
        small_source = self.downsample(source_image)
        h, w = small_source.shape[2:]
        return {"image": small_source, "kp": kp_source,
                "heatmaps": keypoint_heatmaps(kp_source["value"], h, w, self.kp_variance)}

    def motion(self, source, kp_driving):
        """source: prepare_source's dict (batch 1 or N); kp_driving: batch N.

        Returns {'sparse_deformed', 'mask', 'deformation' (N, h, w, 2), 'occlusion_map' (N, 1, h, w)}.
        """
        n = kp_driving["value"].shape[0]
        h, w = source["image"].shape[2:]
        small_source = source["image"].expand(n, -1, h, w)

        # Driving minus source Gaussian heatmaps, with a zero map for the background: (N, K + 1, 1, h, w).
        heatmaps = keypoint_heatmaps(kp_driving["value"], h, w, self.kp_variance) - source["heatmaps"]
        heatmaps = torch.cat([heatmaps.new_zeros(n, 1, h, w), heatmaps], dim=1).unsqueeze(2)
        motions = self.sparse_motions(h, w, kp_driving, source["kp"])
        sparse_deformed = self.warp_by_each_motion(small_source, motions)

        prediction = self.hourglass(torch.cat([heatmaps, sparse_deformed], dim=2).view(n, -1, h, w))
        mask = F.softmax(output_head(self.mask, prediction), dim=1)
        # Blend the K + 1 candidate flows with the per-pixel mask.
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)

        out = {"sparse_deformed": sparse_deformed, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(output_head(self.occlusion, prediction))
        return out

    def forward(self, source_image, kp_driving, kp_source):
        """The straightforward path: source image (N or 1, C, H, W), keypoints with batch N."""
        return self.motion(self.prepare_source(source_image, kp_source), kp_driving)
