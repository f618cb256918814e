"""Exact rewrites of TPSMM's dense motion and inpainting networks for fast inference, applied after loading.

The rewrites of models/inference.py that apply to networks with instance normalisation (which normalises
every image by its own statistics, so, unlike FOMM's BatchNorm, nothing folds into the convolutions):

- nearest-neighbour x2 upsampling followed by a 3x3 convolution, in every up-sampling block, computed as a
  sub-pixel convolution at the input's resolution (SubpixelConv: 2.25x fewer FLOPs);
- the anti-aliasing downsampler blurs only the pixels it keeps (StridedAntiAlias);
- on CPU, a convolution to 1 to 4 channels with a tall kernel (the occlusion masks', the final one to RGB)
  as row convolutions (RowsConv);
- channels_last weights and activations, and on CPU in float32 (`prepack`) oneDNN-prepacked weights for
  the convolutions with large weights (PREPACK_MIN_WEIGHTS), where reordering them on every call costs
  more than the arithmetic (the dense motion hourglass's deep levels). Smaller ones stay plain: on the
  development machine (AMD EPYC, AVX2) oneDNN's prepacked call has a fixed cost of several milliseconds
  that a 128-channel convolution at 16x16 does not amortise (13 against 2 ms).

The keypoint detector (a torchvision ResNet-18, BatchNorm with strided convolutions) and the AVD network
are left as they are but for the memory layout. Results match the original blocks to float rounding.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import AntiAliasInterpolation2d, UpBlock2d
from fom_cli.models.inference import (ROWS_CONV_MAX_CHANNELS, Conv, RowsConv, StridedAntiAlias, SubpixelConv,
                                      _cpu_prepack_available)


# Weights (elements) from which a convolution's weights are prepacked: 512 x 512 x 2 x 2 and larger.
PREPACK_MIN_WEIGHTS = 1 << 20


class SubpixelInstanceNormUpBlock(nn.Module):
    """UpBlock2d with instance normalisation: the upsampling and convolution as one sub-pixel convolution,
    then the normalisation and ReLU at the output's resolution, as before."""

    def __init__(self, block):
        super().__init__()
        self.conv = SubpixelConv(block.conv)
        self.norm = block.norm

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


def _rewrite(module, memory_format, split_rows):
    """Replace the blocks below `module` in place, one at a time (see models/inference._rewrite)."""
    for name, child in module.named_children():
        if isinstance(child, UpBlock2d):
            replacement = SubpixelInstanceNormUpBlock(child)
        elif isinstance(child, AntiAliasInterpolation2d):
            replacement = StridedAntiAlias(child)
        elif isinstance(child, nn.Conv2d):
            few_outputs = child.out_channels <= ROWS_CONV_MAX_CHANNELS and child.kernel_size[0] > 1
            replacement = RowsConv(child) if few_outputs and split_rows else Conv.like(child)
        else:
            _rewrite(child, memory_format, split_rows)
            continue
        setattr(module, name, replacement.to(memory_format=memory_format))


def optimize_tps_for_inference(network, channels_last=True, inplace=False, prepack=False):
    """A TpsDenseMotionNetwork or InpaintingNetwork (or a module holding them) in eval mode with the rewrites
    above: a copy, or the network itself when `inplace`. `prepack`: oneDNN weights for CPU float32."""
    network = (network if inplace else copy.deepcopy(network)).eval()
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
    with torch.no_grad():
        _rewrite(network, torch.channels_last if channels_last else torch.contiguous_format, split_rows=on_cpu)
        if prepack and on_cpu and _cpu_prepack_available():
            for module in network.modules():
                if isinstance(module, Conv) and module.weight.numel() >= PREPACK_MIN_WEIGHTS:
                    module.prepack()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
