"""Exact rewrites of the trained networks for fast inference, applied after loading.

The checkpoints keep the original layout (state-dict keys are untouched); `optimize_for_inference`
returns copies whose blocks compute the same functions with less work:

- BatchNorm in eval mode is a per-channel affine map, so when it directly follows a convolution it is
  folded into that convolution's weights and bias (conv -> BN -> ReLU becomes conv -> ReLU).
- Nearest-neighbour upsampling by 2 followed by a 3x3 convolution equals four 2x2 convolutions on the
  low-resolution input, one per output pixel phase, interleaved ("sub-pixel" convolution): 16 instead
  of 36 multiply-adds per input channel and output pixel, 2.25x fewer FLOPs. The rewritten weights take
  16/9 the memory (about +110 MB for vox-256, whose hourglasses have 1024-channel up blocks).
- On CPU, a convolution with few output channels and a tall kernel (the generator's final 7x7 conv
  to RGB, the occlusion map's) is computed as a 1 x k convolution to out x k channels, one per kernel
  row, whose row-shifted maps are then summed (a grouped k x 1 convolution with one-hot weights): the
  same multiply-adds, but CPU kernels waste most of their vector lanes on 1 to 4 output channels.
- The anti-aliasing downsampler blurs the whole image, then keeps every n-th pixel; the rewrite blurs
  at those pixels only (a convolution with stride n: 1/16 of the work at scale 1/4).
- Weights and activations use the channels_last memory layout, which CPU and GPU convolution kernels
  prefer.
- On CPU in float32 (`prepack=True`), the convolutions run on torch's private oneDNN ops with their
  weights reordered once, and on CPUs with AMX int8 tiles the residual blocks' large convolutions run as
  Int8SplitConv: see models/private_ops.py (each inside a fallback to plain PyTorch).

Results match the original blocks to float rounding (about 1e-6; 1e-5 before the final sigmoid).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import AntiAliasInterpolation2d, DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d
from fom_cli.models.private_ops import (Conv, Int8SplitConv, amx_int8_available, cpu_prepack_available, note_once,
                                      private_ops_allowed)


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


class RowsConv(nn.Module):
    """A k x k convolution to few channels as a 1 x k convolution to (out x k) channels, one per kernel
    row, then the sum of those maps shifted by their row offset (a grouped k x 1 convolution whose
    weights pick one map per shift)."""

    def __init__(self, conv):
        super().__init__()
        out_channels, in_channels, kernel_rows, kernel_columns = conv.weight.shape
        pad_rows, pad_columns = conv.padding
        # (out, in, row, column) -> (out * row, in, 1, column): output channel o * k + r is kernel row r.
        row_weights = conv.weight.detach().permute(0, 2, 1, 3).reshape(out_channels * kernel_rows, in_channels, 1,
                                                                        kernel_columns)
        self.rows = Conv(row_weights, None, (0, pad_columns))
        pick = torch.zeros(out_channels, kernel_rows, kernel_rows, 1)
        pick[:, torch.arange(kernel_rows), torch.arange(kernel_rows), 0] = 1
        self.shift_sum = Conv(pick, conv.bias, (pad_rows, 0), groups=out_channels)

    def forward(self, x):
        return self.shift_sum(self.rows(x))


class StridedAntiAlias(nn.Module):
    """AntiAliasInterpolation2d computing the Gaussian blur only at the pixels the downsampling keeps."""

    def __init__(self, block):
        super().__init__()
        self.weight = nn.Parameter(block.weight.detach(), requires_grad=False)
        self.padding = (block.pad_before, block.pad_after, block.pad_before, block.pad_after)
        self.groups, self.step, self.scale = block.groups, block.step, block.scale

    def forward(self, x):
        if self.scale == 1.0:
            return x
        out = F.conv2d(F.pad(x, self.padding), self.weight, groups=self.groups, stride=self.step)
        return out[:, :, :x.shape[2] // self.step, :x.shape[3] // self.step]


# Where the residual blocks' convolutions become Int8SplitConvs: from 256 channels x 3x3 (vox-256's
# bottleneck). Narrower ones lose to float32, the input's splitting into limbs costing more than the
# int8 units save (the bundled toon-128's 128 channels; README: measured speeds).
INT8_SPLIT_MIN_FAN_IN = 256 * 3 * 3

# Output channels up to which RowsConv beats a direct k x k convolution (CPU vector lanes hold 16).
ROWS_CONV_MAX_CHANNELS = 4


class ConvReLU(nn.Module):
    """SameBlock2d / DownBlock2d with the BatchNorm folded: conv -> ReLU [-> 2x2 average pooling]."""

    def __init__(self, conv, pool=False):
        super().__init__()
        self.conv = Conv.like(conv, relu=True)
        self.pool = pool

    def forward(self, x):
        out = self.conv(x)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class FoldedResBlock(nn.Module):
    """ResBlock2d with norm2 folded into conv1 (norm1 acts on the block's input and stays)."""

    def __init__(self, block):
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = Conv.like(folded_conv(block.conv1, block.norm2), relu=True)
        self.conv2 = Conv.like(block.conv2)

    def forward(self, x):
        return self.conv2(self.conv1(F.relu(self.norm1(x), inplace=True))) + x


class SubpixelConv(nn.Module):
    """Nearest x2 upsampling then a 3x3 convolution (padding 1) [then a ReLU], computed at the input's
    resolution.

    Output row 2i + a of the upsampled-then-convolved image sees input rows (i - 1, i) for a = 0, with
    kernel rows (w0, w1 + w2), and rows (i, i + 1) for a = 1, with kernel rows (w0 + w1, w2); columns
    likewise. One 2x2 convolution over the zero-padded input produces all four phases as channel groups.
    """

    def __init__(self, conv, relu=False, shuffle=False):
        super().__init__()
        self.shuffle = shuffle
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1):
            raise ValueError("sub-pixel rewrite needs a 3x3 convolution with padding 1")
        w = conv.weight.detach()  # (out, in, 3, 3)
        rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], dim=2),   # phase a = 0
                torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], dim=2)]   # phase a = 1
        kernels = []
        for row_kernel in rows:  # (out, in, 2, 3): now merge columns the same way
            kernels.append(torch.stack([row_kernel[..., 0], row_kernel[..., 1] + row_kernel[..., 2]], dim=-1))
            kernels.append(torch.stack([row_kernel[..., 0] + row_kernel[..., 1], row_kernel[..., 2]], dim=-1))
        # Phases in the order (a, b) = (0, 0), (0, 1), (1, 0), (1, 1), stacked along output channels.
        bias = None if conv.bias is None else conv.bias.detach().repeat(4)
        self.conv = Conv(torch.cat(kernels, dim=0), bias, (1, 1), relu=relu)
        self.out_channels = conv.out_channels

    def forward(self, x):
        n, _, h, w = x.shape
        c = self.out_channels
        # All four phases in one convolution; padding 1 gives an (h + 1) x (w + 1) map in which phase
        # (a, b) starts at row a, column b.
        phases = self.conv(x)
        if self.shuffle:
            # For graph engines (ONNX): the phases cropped, then interleaved by one pixel shuffle (DepthToSpace),
            # where the strided writes below would become a slow scatter.
            crops = [phases[:, phase * c:(phase + 1) * c, a:a + h, b:b + w]
                     for phase, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
            return F.pixel_shuffle(torch.stack(crops, dim=2).reshape(n, 4 * c, h, w), 2)
        out = torch.empty((n, c, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device,
                          memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                          else torch.contiguous_format)
        for a in (0, 1):
            for b in (0, 1):
                phase = 2 * a + b
                out[:, :, a::2, b::2] = phases[:, phase * c:(phase + 1) * c, a:a + h, b:b + w]
        return out


class SubpixelUpBlock(SubpixelConv):
    """UpBlock2d (nearest x2 upsampling, 3x3 conv, BN, ReLU) with the BatchNorm folded, computed at the
    input's resolution (SubpixelConv)."""

    def __init__(self, block, shuffle=False):
        super().__init__(folded_conv(block.conv, block.norm), relu=True, shuffle=shuffle)


def _rewrite(module, memory_format, split_rows, shuffle=False):
    """Replace every foldable block below `module`, in place, converting weights to `memory_format` one
    block at a time (converting the whole network at the end would hold two copies of it at once).
    shuffle: sub-pixel convolutions interleave by a pixel shuffle (for graph engines)."""
    for name, child in module.named_children():
        if isinstance(child, DownBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm), pool=True)
        elif isinstance(child, SameBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm))
        elif isinstance(child, UpBlock2d):
            replacement = SubpixelUpBlock(child, shuffle)
        elif isinstance(child, ResBlock2d):
            replacement = FoldedResBlock(child)
        elif isinstance(child, AntiAliasInterpolation2d):
            replacement = StridedAntiAlias(child)
        elif isinstance(child, nn.Conv2d):
            few_outputs = child.out_channels <= ROWS_CONV_MAX_CHANNELS and child.kernel_size[0] > 1
            replacement = RowsConv(child) if few_outputs and split_rows else Conv.like(child)
        else:
            _rewrite(child, memory_format, split_rows, shuffle)
            continue
        setattr(module, name, replacement.to(memory_format=memory_format))


def optimize_for_inference(network, channels_last=True, inplace=False, prepack=False, portable=False):
    """`network` in eval mode with the exact rewrites above applied: a copy, or the network itself when
    `inplace` (saves holding two copies of the weights while loading). `prepack`: also reorder the
    convolution weights for oneDNN (for CPU float32 inference; ignored where oneDNN is missing or with
    FOM_NO_PRIVATE_OPS=1). `portable`: the rewrites for a graph engine (ONNX): row convolutions (plain
    convolutions, which onnxruntime's CPU kernels gain from as torch's do), no private ops, sub-pixel
    convolutions interleaved by a pixel shuffle."""
    network = (network if inplace else copy.deepcopy(network)).eval()
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
    with torch.no_grad():
        _rewrite(network, torch.channels_last if channels_last else torch.contiguous_format,
                 split_rows=on_cpu or portable, shuffle=portable)
        if prepack and on_cpu and cpu_prepack_available() and private_ops_allowed():
            if amx_int8_available():
                for module in network.modules():
                    if isinstance(module, FoldedResBlock) and module.conv1.weight[0].numel() >= INT8_SPLIT_MIN_FAN_IN:
                        try:
                            conv1, conv2 = Int8SplitConv.like(module.conv1), Int8SplitConv.like(module.conv2)
                        except Exception as error:  # the private int8 ops changed: oneDNN float32 stays
                            note_once(f"{Int8SplitConv.description} could not be built ({type(error).__name__}); "
                                       f"using float32 convolutions")
                            break
                        module.conv1, module.conv2 = conv1, conv2
            for module in network.modules():
                if isinstance(module, Conv):
                    module.prepack()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
