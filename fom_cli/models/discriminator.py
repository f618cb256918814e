"""MultiScaleDiscriminator (training only): a PatchGAN per image scale, whose intermediate feature maps
also serve the feature-matching loss."""

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import keypoint_heatmaps


class DiscriminatorBlock(nn.Module):
    """4x4 conv (optionally spectral-normalised) -> instance norm -> leaky ReLU -> optional 2x2 pooling."""

    def __init__(self, in_features, out_features, norm=False, kernel_size=4, pool=False, sn=False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        if sn:
            # The classic hook-based spectral norm: its state-dict keys (weight_orig, weight_u, weight_v)
            # are those of the released checkpoints.
            self.conv = nn.utils.spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x):
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        if self.pool:
            out = F.avg_pool2d(out, (2, 2))
        return out


class Discriminator(nn.Module):
    def __init__(self, num_channels=3, block_expansion=64, num_blocks=4, max_features=512, sn=False,
                 use_kp=False, num_kp=10, kp_variance=0.01, **unused_common_params):
        super().__init__()

        def width(level):
            return min(max_features, block_expansion * (2 ** level))

        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(num_channels + num_kp * use_kp if i == 0 else width(i), width(i + 1),
                               norm=(i != 0), kernel_size=4, pool=(i != num_blocks - 1), sn=sn)
            for i in range(num_blocks))
        last_conv = self.down_blocks[-1].conv
        self.conv = nn.Conv2d(last_conv.out_channels, 1, kernel_size=1)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x, kp=None):
        """Returns (feature maps of every block, the patch prediction map)."""
        out = x
        if self.use_kp:
            heatmaps = keypoint_heatmaps(kp["value"], x.shape[2], x.shape[3], self.kp_variance)
            out = torch.cat([out, heatmaps], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


def scale_key(scale):
    """Module names cannot hold '.', so scale 0.5 is stored as '0-5' (as in the original)."""
    return str(scale).replace(".", "-")


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, scales=(), **kwargs):
        super().__init__()
        self.scales = scales
        self.discs = nn.ModuleDict({scale_key(scale): Discriminator(**kwargs) for scale in scales})

    def forward(self, pyramid, kp=None):
        """pyramid: {'prediction_<scale>': image}; returns feature_maps_<scale> and prediction_map_<scale>."""
        out = {}
        for scale in self.scales:
            feature_maps, prediction_map = self.discs[scale_key(scale)](pyramid[f"prediction_{scale}"], kp)
            out[f"feature_maps_{scale}"] = feature_maps
            out[f"prediction_map_{scale}"] = prediction_map
        return out
