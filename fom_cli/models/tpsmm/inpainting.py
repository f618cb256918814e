"""InpaintingNetwork: TPSMM's generator. Source image + dense motion -> the driving frame.

An encoder turns the source into feature maps at four resolutions. The decoder starts from the coarsest,
warped by the flow and dimmed by the matching occlusion mask; at each finer level it adds the warped,
masked encoder features of that level (a U-Net whose skip connections are moved into the driving pose).
At full resolution, where the last mask says the source is visible, the frame is the source image warped
by the flow; elsewhere it is what the decoder paints.

The source side (`encode_source`) depends on the source alone, so an animation computes it once and
decodes every batch of driving frames from it (`decode`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, grid_sample, output_head


def resize_flow(deformation, height, width):
    """An (N, h, w, 2) flow resized (bilinearly, corners aligned) to height x width."""
    if deformation.shape[1:3] == (height, width):
        return deformation
    deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                align_corners=True)
    return deformation.permute(0, 2, 3, 1)


def warp(image, deformation):
    """Warp `image` (1 or N, C, H, W) by N flows given at any resolution."""
    n = deformation.shape[0]
    h, w = image.shape[2:]
    return grid_sample(image.expand(n, -1, h, w), resize_flow(deformation, h, w), align_corners=True)


def occlude(features, occlusion_mask):
    """Dim features where the mask says the source cannot be seen (mask resized to the features)."""
    if occlusion_mask.shape[2:] != features.shape[2:]:
        occlusion_mask = F.interpolate(occlusion_mask, size=features.shape[2:], mode="bilinear", align_corners=True)
    return features * occlusion_mask


class InpaintingNetwork(nn.Module):
    def __init__(self, num_channels, block_expansion, max_features, num_down_blocks, multi_mask=True):
        super().__init__()
        self.multi_mask = multi_mask
        norm = nn.InstanceNorm2d

        def width(level):
            return min(max_features, block_expansion * (2 ** level))

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3), norm=norm)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(width(i), width(i + 1), kernel_size=(3, 3), padding=(1, 1), norm=norm)
            for i in range(num_down_blocks))

        # Decoder levels, coarsest first; level j works at the resolution of down block i = n - 1 - j's
        # output: two residual blocks, then an up-sampling block. Below the coarsest level its input is the
        # up-sampled features with the warped encoder features appended, twice the channels.
        up_blocks, resblocks = [], []
        for level in range(num_down_blocks):
            i = num_down_blocks - 1 - level
            in_filters = width(i + 1) * (1 if level == 0 else 2)
            resblocks += [ResBlock2d(in_filters, kernel_size=(3, 3), padding=(1, 1), norm=norm) for _ in range(2)]
            up_blocks.append(UpBlock2d(in_filters, width(i), kernel_size=(3, 3), padding=(1, 1), norm=norm))
        self.up_blocks = nn.ModuleList(up_blocks)
        self.resblock = nn.ModuleList(resblocks)

        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.num_channels = num_channels

    def encode_source(self, source_image):
        """What depends on the source alone, computed once per source image: the image itself and the
        encoder's feature maps, finest first."""
        feature_maps = [self.first(source_image)]
        for block in self.down_blocks:
            feature_maps.append(block(feature_maps[-1]))
        return {"image": source_image, "feature_maps": feature_maps}

    def decode(self, source, motion):
        """source: encode_source's dict (batch 1 or N); motion: the dense motion network's output (batch N).

        Returns {'deformed': the source image warped by the flow, 'prediction': the frame}, (N, C, H, W).
        """
        deformation = motion["deformation"]
        occlusion_masks = motion["occlusion_maps"]
        coarsest_first = source["feature_maps"][::-1]

        def warped_features(level):
            mask = occlusion_masks[level] if self.multi_mask else occlusion_masks[0]
            return occlude(warp(coarsest_first[level], deformation), mask)

        out = warped_features(0)
        for level, up_block in enumerate(self.up_blocks):
            out = self.resblock[2 * level + 1](self.resblock[2 * level](out))
            out = up_block(out)
            skip = warped_features(level + 1)
            if level < len(self.up_blocks) - 1:
                out = torch.cat([out, skip], dim=1)

        # Full resolution: the decoder's features count only where the source is hidden (1 - mask), and
        # the frame is the warped source image where it is visible.
        deformed = warp(source["image"], deformation)
        visible = occlusion_masks[-1]
        if visible.shape[2:] != out.shape[2:]:
            visible = F.interpolate(visible, size=out.shape[2:], mode="bilinear", align_corners=True)
        out = out * (1 - visible) + skip
        painted = torch.sigmoid(output_head(self.final, out))
        return {"deformed": deformed, "prediction": painted * (1 - visible) + deformed * visible}

    def forward(self, source_image, dense_motion):
        """The straightforward path, as the original: the source encoded on every call. Returns the dense
        motion's contribution maps, deformed sources and occlusion masks with 'deformed' and 'prediction'."""
        out = {key: dense_motion[key] for key in ("contribution_maps", "deformed_source", "occlusion_maps")}
        out.update(self.decode(self.encode_source(source_image), dense_motion))
        return out
