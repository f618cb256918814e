"""Building blocks shared by the three networks: conv blocks, the hourglass, anti-aliased downsampling,
coordinate grids and keypoint heatmaps.

Module and attribute names (conv, norm, encoder.down_blocks, ...) are those of the original FOMM code,
because they are the state-dict keys of the released checkpoints. The Thin-Plate Spline Motion Model
(models/tpsmm) uses the same blocks with instance instead of batch normalisation: the blocks take the
normalisation layer as `norm`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height, width, device=None, dtype=torch.float32):
    """(H, W, 2) grid of (x, y) in [-1, 1]: pixel i maps to 2 * i / (n - 1) - 1.

    This is an align_corners=True style grid. FOMM uses it with grid_sample in either convention (see
    `grid_sample` below); keypoints live in this coordinate system.
    """
    x = torch.arange(width, device=device, dtype=dtype)
    y = torch.arange(height, device=device, dtype=dtype)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    return torch.stack([x.view(1, -1).expand(height, width), y.view(-1, 1).expand(height, width)], dim=2)


def full_precision(tensor):
    """float32 for a half-precision tensor (what autocast gives); float32 and float64 as they are (the
    parity tests run the networks in float64 to know the exact result)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def inverse_2x2(matrices):
    """The inverses of (..., 2, 2) matrices: torch.inverse, or its closed form while exporting to ONNX, which
    has no matrix inverse (the same function; the two round differently, by about 1e-7 relative)."""
    if not torch.onnx.is_in_onnx_export():
        return torch.inverse(matrices)
    a, b, c, d = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 1, 0], matrices[..., 1, 1]
    adjugate = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return adjugate / (a * d - b * c)[..., None, None]


def output_head(layer, features):
    """A network's output layer in float32, also under autocast: keypoint heatmaps and jacobians, the
    softmax masks that blend the candidate motions, occlusion maps, the frame's colours. These few
    channels steer or paint every pixel, and bf16's 8-bit mantissa there costs more than all the rest
    of the network together (the bundled model's evaluate-synth ratio, 8 pairs: 0.2940 in fp32, 0.3116
    in bf16, 0.2936 in bf16 with the heads in fp32), for about 2% of a frame's FLOPs."""
    with torch.autocast(features.device.type, enabled=False):
        return layer(full_precision(features))


def grid_sample(image, grid, align_corners, padding_mode="zeros"):
    """Bilinear sampling at (x, y) positions in [-1, 1].

    The released checkpoints were trained with torch 1.0, whose grid_sample behaved like
    align_corners=True; the original code run on today's torch gets align_corners=False. Every model
    takes the convention as an option so both can be reproduced.

    Sampling runs in float32 even under autocast: grid coordinates in half precision would be off by
    up to a quarter pixel at 256 px.
    """
    return F.grid_sample(full_precision(image), full_precision(grid), mode="bilinear", padding_mode=padding_mode,
                         align_corners=align_corners)


def keypoint_heatmaps(keypoints, height, width, variance):
    """Gaussian bumps around keypoints: (N, K, 2) values -> (N, K, H, W)."""
    grid = make_coordinate_grid(height, width, keypoints.device, keypoints.dtype)
    offsets = grid.view(1, 1, height, width, 2) - keypoints.view(*keypoints.shape[:2], 1, 1, 2)
    return torch.exp(-0.5 * (offsets ** 2).sum(-1) / variance)


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm -> ReLU -> conv, twice), resolution preserved."""

    def __init__(self, features, kernel_size=3, padding=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.norm1 = norm(features, affine=True)
        self.norm2 = norm(features, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest-neighbour upsampling by 2, then conv -> norm -> ReLU."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features, affine=True)

    def forward(self, x):
        out = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.relu(self.norm(self.conv(out)))


class DownBlock2d(nn.Module):
    """conv -> norm -> ReLU, then 2x2 average pooling."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """conv -> norm -> ReLU, resolution preserved."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


def _hourglass_width(block_expansion, max_features, level):
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    """Hourglass encoder: returns the input and every down block's output (the skip connections)."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, norm=nn.BatchNorm2d):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else _hourglass_width(block_expansion, max_features, i),
                        _hourglass_width(block_expansion, max_features, i + 1), norm=norm)
            for i in range(num_blocks))

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: upsample and concatenate the matching skip connection at each level."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, norm=nn.BatchNorm2d):
        super().__init__()
        up_blocks = []
        for i in reversed(range(num_blocks)):
            in_filters = (1 if i == num_blocks - 1 else 2) * _hourglass_width(block_expansion, max_features, i + 1)
            up_blocks.append(UpBlock2d(in_filters, _hourglass_width(block_expansion, max_features, i), norm=norm))
        self.up_blocks = nn.ModuleList(up_blocks)
        self.out_filters = block_expansion + in_features
        # Channels of every level's output, coarsest first (the up-sampled features, then the skip).
        self.level_filters = [2 * _hourglass_width(block_expansion, max_features, i)
                              for i in reversed(range(1, num_blocks))] + [self.out_filters]

    def forward(self, skips):
        return self.levels(skips)[-1]

    def levels(self, skips):
        """Every level's output, coarsest first; the last is the decoder's output."""
        outs = []
        out = skips[-1]
        for i, block in enumerate(self.up_blocks):
            out = torch.cat([block(out), skips[-2 - i]], dim=1)
            outs.append(out)
        return outs


class Hourglass(nn.Module):
    """U-Net style encoder-decoder; the output keeps the input's resolution and appends its channels."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, norm=nn.BatchNorm2d):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.out_filters = self.decoder.out_filters
        self.level_filters = self.decoder.level_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def levels(self, x):
        """Every decoder level's output, coarsest first (TPSMM predicts occlusion masks from several)."""
        return self.decoder.levels(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Downsample by `scale` (1/2, 1/4, ...) after a Gaussian blur, so that no aliasing sneaks in."""

    def __init__(self, channels, scale):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.pad_before = kernel_size // 2
        self.pad_after = self.pad_before - 1 if kernel_size % 2 == 0 else self.pad_before

        position = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        gaussian = torch.exp(-position ** 2 / (2 * sigma ** 2))
        # The separable product, built as the original does (exp(a) * exp(b), then one normalisation)
        # so the buffer matches the checkpoints' `down.weight` to the last bit.
        kernel = gaussian.view(-1, 1) * gaussian.view(1, -1)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1))
        self.groups = channels
        self.step = round(1 / scale)
        self.scale = scale
        if not math.isclose(self.step * scale, 1.0):
            raise ValueError(f"scale_factor must be 1/n for a whole number n, got {scale}")

    def forward(self, x):
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.pad_before, self.pad_after, self.pad_before, self.pad_after))
        out = F.conv2d(out, weight=self.weight, groups=self.groups)
        # Nearest-neighbour downsampling by a whole factor keeps every step-th pixel; the output size
        # rounds down, as F.interpolate(scale_factor=scale) does in the original.
        height, width = x.shape[2] // self.step, x.shape[3] // self.step
        return out[:, :, :height * self.step:self.step, :width * self.step:self.step]
