"""Exact rewrites of TPSMM's dense motion and inpainting networks for fast inference, applied after loading.

The rewrites of models/inference.py that apply to networks with instance normalisation (which normalises
every image by its own statistics, so, unlike FOMM's BatchNorm, nothing folds into the convolutions):

- nearest-neighbour x2 upsampling followed by a 3x3 convolution, in every up-sampling block, computed as a
  sub-pixel convolution at the input's resolution (SubpixelConv: 2.25x fewer FLOPs);
- the anti-aliasing downsampler blurs only the pixels it keeps (StridedAntiAlias);
- on CPU, a convolution to 1 to 4 channels with a tall kernel (the occlusion masks', the final one to RGB)
  as row convolutions (RowsConv);
- on CPU, the residual blocks' 3x3 convolutions of 512 channels (the inpainting decoder's two coarsest
  levels: 96 of vox-256's 212 GFLOP per frame after the other rewrites) as Winograd F(4x4, 3x3)
  (WinogradConv: 4x fewer multiply-adds, 2x faster there);
- channels_last weights and activations on GPUs (as for FOMM; on the CPU the plain layout measured faster:
  grid sampling and the Winograd convolutions produce plain maps, and converting them back and forth cost
  more than channels_last saved), and on CPU in float32 (`prepack`) oneDNN-prepacked weights for
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

from fom_cli.models.blocks import AntiAliasInterpolation2d, ResBlock2d, UpBlock2d
from fom_cli.models.inference import ROWS_CONV_MAX_CHANNELS, RowsConv, StridedAntiAlias, SubpixelConv
from fom_cli.models.private_ops import Conv, cpu_prepack_available


# Weights (elements) from which a convolution's weights are prepacked: 512 x 512 x 2 x 2 and larger.
PREPACK_MIN_WEIGHTS = 1 << 20


# Residual blocks' 3x3 convolutions from this many channels in and out run as WinogradConv on CPU.
WINOGRAD_MIN_CHANNELS = 512

# Winograd F(4x4, 3x3) (Lavin and Gray 2016): input tiles 6x6 -> B^T d B, kernels 3x3 -> G g G^T, their
# elementwise product summed over input channels, output tiles 4x4 = A^T m A. The matrices come from
# interpolating at the points 0, -1, 1, 1/2, -2 and infinity (Barabasz et al. 2020, "Error analysis and
# improving the accuracy of Winograd convolution"): in float32 a third of the error of the usual points
# 0, +-1, +-2 (measured on 512-channel blocks: 5e-6 from float64 against 1.6e-5), at the same cost. B^T and
# A^T hold powers of two and their sums, exact in float32; G is applied in float64 once per kernel.
WINOGRAD_B_T = ((1, -3 / 2, -2, 3 / 2, 1, 0), (0, 1, -5 / 2, 1 / 2, 1, 0), (0, -1, 1 / 2, 5 / 2, 1, 0),
                (0, -2, -1, 2, 1, 0), (0, 1 / 2, -1, -1 / 2, 1, 0), (0, 1, -3 / 2, -2, 3 / 2, 1))
WINOGRAD_G = ((1, 0, 0), (-1 / 3, 1 / 3, -1 / 3), (1 / 3, 1 / 3, 1 / 3), (-16 / 15, -8 / 15, -4 / 15),
              (1 / 15, -2 / 15, 4 / 15), (0, 0, 1))
WINOGRAD_A_T = ((1, 1, 1, 1, 1, 0), (0, -1, 1, 1 / 2, -2, 0), (0, 1, 1, 1 / 4, 4, 0), (0, -1, 1, 1 / 8, -8, 1))


class WinogradConv(nn.Module):
    """A 3x3 convolution (stride 1, padding 1) as Winograd's F(4x4, 3x3): 36 matrix products over the input
    channels instead of a 3x3 convolution, 4x fewer multiply-adds, for the CPU.

    Every 4x4 block of the output comes from a 6x6 tile of the padded input (tiles overlap by 2). The tiles
    and the kernels are transformed by fixed matrices (the kernels once, in float64), multiplied pointwise
    per transformed position and summed over input channels (36 matrix products, one per position), and
    transformed back. Exact in exact arithmetic; in float32, on 512 channels of ReLU activations, 5e-6 to
    6e-6 from float64 (6 to 7 units of 2^-24 times the largest sum |w| |x|), against 5e-7 to 4e-6 for
    oneDNN's direct convolution, depending on the kernels the CPU gets (tests hold it to 12 units).
    Costs 4x the weights' memory (36 transformed values per 3x3 kernel): 38 MB instead of 9 MB per
    512-channel convolution, +226 MB for vox-256's eight. Always float32, also under autocast (it is a CPU
    rewrite, where float32 matrix products are what the CPU does fastest).
    """

    def __init__(self, conv):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError("Winograd rewrite needs a 3x3 convolution with stride 1 and padding 1")
        weight = conv.weight.detach()
        g = torch.tensor(WINOGRAD_G, dtype=torch.float64)
        transformed = torch.einsum("ai,ocij,bj->aboc", g, weight.double(), g)   # (6, 6, out, in)
        self.kernels = nn.Parameter(transformed.reshape(36, *weight.shape[:2]).float().contiguous(),
                                    requires_grad=False)
        b_t, a_t = torch.tensor(WINOGRAD_B_T, dtype=torch.float32), torch.tensor(WINOGRAD_A_T, dtype=torch.float32)
        # The 2-D transforms of row-major flattened tiles: vec(B^T d B) = (B^T kron B^T) vec(d).
        self.register_buffer("input_transform", torch.kron(b_t, b_t))
        self.register_buffer("output_transform", torch.kron(a_t, a_t))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            images = x.float().contiguous().split(1)
            return torch.cat([self.convolve(image) for image in images]).to(x.dtype)

    def convolve(self, x):
        _, channels, height, width = x.shape
        rows, columns = -(-height // 4), -(-width // 4)
        # Padded by 1, and up to whole tiles: (1, channels * 36, tiles), each tile's 36 values in a row.
        tiles = F.unfold(F.pad(x, (1, 1 + 4 * columns - width, 1, 1 + 4 * rows - height)), 6, stride=4)
        transformed = torch.matmul(self.input_transform, tiles.view(channels, 36, rows * columns))
        products = torch.bmm(self.kernels, transformed.transpose(0, 1))             # (36, out, tiles)
        out_channels = products.shape[1]
        blocks = torch.mm(self.output_transform, products.view(36, -1))            # (16, out * tiles)
        blocks = blocks.view(16, out_channels, rows, columns).transpose(0, 1).reshape(1, 16 * out_channels, rows,
                                                                                      columns)
        out = F.pixel_shuffle(blocks, 4)[:, :, :height, :width]
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class SubpixelInstanceNormUpBlock(nn.Module):
    """UpBlock2d with instance normalisation: the upsampling and convolution as one sub-pixel convolution,
    then the normalisation and ReLU at the output's resolution, as before."""

    def __init__(self, block, shuffle=False):
        super().__init__()
        self.conv = SubpixelConv(block.conv, shuffle=shuffle)
        self.norm = block.norm

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


def _rewrite(module, memory_format, on_cpu, shuffle=False):
    """Replace the blocks below `module` in place, one at a time (see models/inference._rewrite)."""
    for name, child in module.named_children():
        if isinstance(child, ResBlock2d) and on_cpu and child.conv1.in_channels >= WINOGRAD_MIN_CHANNELS:
            child.conv1, child.conv2 = WinogradConv(child.conv1), WinogradConv(child.conv2)
            continue
        if isinstance(child, UpBlock2d):
            replacement = SubpixelInstanceNormUpBlock(child, shuffle)
        elif isinstance(child, AntiAliasInterpolation2d):
            replacement = StridedAntiAlias(child)
        elif isinstance(child, nn.Conv2d):
            few_outputs = child.out_channels <= ROWS_CONV_MAX_CHANNELS and child.kernel_size[0] > 1
            replacement = RowsConv(child) if few_outputs and (on_cpu or shuffle) else Conv.like(child)
        else:
            _rewrite(child, memory_format, on_cpu, shuffle)
            continue
        setattr(module, name, replacement.to(memory_format=memory_format))


def optimize_tps_for_inference(network, channels_last=None, inplace=False, prepack=False, portable=False):
    """A TpsDenseMotionNetwork or InpaintingNetwork (or a module holding them) in eval mode with the rewrites
    above: a copy, or the network itself when `inplace`. channels_last: None for the device's faster layout
    (channels_last on GPUs, plain on the CPU). `prepack`: oneDNN weights for CPU float32. `portable`: only
    the rewrites for a graph engine (ONNX): no Winograd, row convolutions (as for FOMM), sub-pixel
    convolutions interleaved by a pixel shuffle."""
    network = (network if inplace else copy.deepcopy(network)).eval()
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters()) and not portable
    if channels_last is None:
        channels_last = not on_cpu
    with torch.no_grad():
        _rewrite(network, torch.channels_last if channels_last else torch.contiguous_format, on_cpu, shuffle=portable)
        if prepack and on_cpu and cpu_prepack_available():
            for module in network.modules():
                if isinstance(module, Conv) and module.weight.numel() >= PREPACK_MIN_WEIGHTS:
                    module.prepack()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
