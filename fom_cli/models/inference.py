"""Exact rewrites of the trained networks for fast inference, applied after loading.

The checkpoints keep the original layout (state-dict keys are untouched); `optimize_for_inference`
returns copies whose blocks compute the same functions with less work:

- BatchNorm in eval mode is a per-channel affine map, so when it directly follows a convolution it is
  folded into that convolution's weights and bias (conv -> BN -> ReLU becomes conv -> ReLU).
- Nearest-neighbour upsampling by 2 followed by a 3x3 convolution equals four 2x2 convolutions on the
  low-resolution input, one per output pixel phase, interleaved ("sub-pixel" convolution): 16 instead
  of 36 multiply-adds per input channel and output pixel, 2.25x fewer FLOPs (for all but the widest,
  lowest-resolution up blocks, where it would cost more memory than it saves time).
- Weights and activations use the channels_last memory layout, which CPU and GPU convolution kernels
  prefer.

Results match the original blocks to float rounding (about 1e-6).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


def folded_conv(conv, norm):
    """A copy of `conv` with the eval-mode BatchNorm `norm` that follows it folded in."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    # Built on the meta device: no throw-away random initialisation of a second set of weights.
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True, device="meta")
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach(), requires_grad=False)
    fused.bias = nn.Parameter(((bias - norm.running_mean) * scale + norm.bias).detach(), requires_grad=False)
    return fused


class ConvReLU(nn.Module):
    """SameBlock2d / DownBlock2d with the BatchNorm folded: conv -> ReLU [-> 2x2 average pooling]."""

    def __init__(self, conv, pool=False):
        super().__init__()
        self.conv = conv
        self.pool = pool

    def forward(self, x):
        out = F.relu(self.conv(x), inplace=True)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class UpsampleConvReLU(nn.Module):
    """UpBlock2d with the BatchNorm folded, kept at full resolution (see SUBPIXEL_MAX_WEIGHTS)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return F.relu(self.conv(F.interpolate(x, scale_factor=2, mode="nearest")), inplace=True)


# The sub-pixel form stores 16/9 as many weights. The widest up blocks (1024 channels) sit at the deep,
# 2x2 to 8x8 end of the hourglasses, where the FLOPs it would save are a fraction of a percent of a
# frame's; there it is not worth the memory.
SUBPIXEL_MAX_WEIGHTS = 2 ** 20


class FoldedResBlock(nn.Module):
    """ResBlock2d with norm2 folded into conv1 (norm1 acts on the block's input and stays)."""

    def __init__(self, block):
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = folded_conv(block.conv1, block.norm2)
        self.conv2 = block.conv2

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x), inplace=True))
        return self.conv2(F.relu(out, inplace=True)) + x


class SubpixelUpBlock(nn.Module):
    """UpBlock2d (nearest x2 upsampling, 3x3 conv, BN, ReLU) computed at the input's resolution.

    Output row 2i + a of the upsampled-then-convolved image sees input rows (i - 1, i) for a = 0, with
    kernel rows (w0, w1 + w2), and rows (i, i + 1) for a = 1, with kernel rows (w0 + w1, w2); columns
    likewise. One 2x2 convolution over the zero-padded input produces all four phases as channel groups.
    """

    def __init__(self, block):
        super().__init__()
        conv = folded_conv(block.conv, block.norm)
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1):
            raise ValueError("sub-pixel rewrite needs a 3x3 convolution with padding 1")
        w = conv.weight  # (out, in, 3, 3)
        rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], dim=2),   # phase a = 0
                torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], dim=2)]   # phase a = 1
        kernels = []
        for row_kernel in rows:  # (out, in, 2, 3): now merge columns the same way
            kernels.append(torch.stack([row_kernel[..., 0], row_kernel[..., 1] + row_kernel[..., 2]], dim=-1))
            kernels.append(torch.stack([row_kernel[..., 0] + row_kernel[..., 1], row_kernel[..., 2]], dim=-1))
        # Phases in the order (a, b) = (0, 0), (0, 1), (1, 0), (1, 1), stacked along output channels.
        self.weight = nn.Parameter(torch.cat(kernels, dim=0).detach(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().repeat(4), requires_grad=False)
        self.out_channels = conv.out_channels

    def forward(self, x):
        n, _, h, w = x.shape
        c = self.out_channels
        # All four phases in one convolution; padding 1 gives an (h + 1) x (w + 1) map in which phase
        # (a, b) starts at row a, column b.
        phases = F.relu(F.conv2d(x, self.weight, self.bias, padding=1), inplace=True)
        out = torch.empty((n, c, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device,
                          memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                          else torch.contiguous_format)
        for a in (0, 1):
            for b in (0, 1):
                phase = 2 * a + b
                out[:, :, a::2, b::2] = phases[:, phase * c:(phase + 1) * c, a:a + h, b:b + w]
        return out


def _rewrite(module, memory_format):
    """Replace every foldable block below `module`, in place, converting weights to `memory_format` one
    block at a time (converting the whole network at the end would hold two copies of it at once)."""
    for name, child in module.named_children():
        if isinstance(child, DownBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm), pool=True)
        elif isinstance(child, SameBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm))
        elif isinstance(child, UpBlock2d):
            if child.conv.weight.numel() <= SUBPIXEL_MAX_WEIGHTS:
                replacement = SubpixelUpBlock(child)
            else:
                replacement = UpsampleConvReLU(folded_conv(child.conv, child.norm))
        elif isinstance(child, ResBlock2d):
            replacement = FoldedResBlock(child)
        else:
            _rewrite(child, memory_format)
            if isinstance(child, nn.Conv2d):
                child.to(memory_format=memory_format)
            continue
        setattr(module, name, replacement.to(memory_format=memory_format))


def optimize_for_inference(network, channels_last=True, inplace=False):
    """`network` in eval mode with the exact rewrites above applied: a copy, or the network itself when
    `inplace` (saves holding two copies of the weights while loading)."""
    network = (network if inplace else copy.deepcopy(network)).eval()
    with torch.no_grad():
        _rewrite(network, torch.channels_last if channels_last else torch.contiguous_format)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
