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
- On CPU in float32 (`prepack=True`), every convolution's weights are reordered once into oneDNN's
  blocked layout, instead of on every call, and the ReLU that follows runs inside the convolution.
  This matters most for the hourglasses' deep levels: 1024 channels at 4x4 to 16x16 pixels, where the
  per-call reorder of a 38 MB weight tensor cost more than the arithmetic.
- On CPUs with AMX int8 tiles (`prepack=True`), the residual blocks' convolutions of 256 channels and
  more (vox-256's bottleneck, half of all its FLOPs) run as Int8SplitConv: float32 numbers split into
  three 8-bit limbs whose products are exact on the int8 matrix units: faster than oneDNN's float32
  convolution there, and as close to float64 (README: measured speeds).

Results match the original blocks to float rounding (about 1e-6; 1e-5 before the final sigmoid).

The last two rest on private torch ops (torch._C._nn.mkldnn_reorder_conv2d_weight, torch.ops.mkldnn and
torch.ops.onednn), which a torch release may change or drop. So each is built inside a fallback to plain
PyTorch, and its first call is checked against the plain path on that call's own input: an error, or a
result more than 1e-5 (relative) away, switches the module to plain PyTorch for good, with a one-line
note. FOM_NO_PRIVATE_OPS=1 leaves them out altogether.
"""

import copy
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fom_cli.models.blocks import AntiAliasInterpolation2d, DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


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


def private_ops_allowed():
    """False when the user opted out of torch's private CPU ops with FOM_NO_PRIVATE_OPS=1."""
    return os.environ.get("FOM_NO_PRIVATE_OPS", "").strip().lower() not in ("1", "true", "yes", "on")


def _cpu_prepack_available():
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# How far (max |fast - plain| / max |plain|) a private op's first result may be from plain PyTorch's. Both
# are float32 convolutions, which agree to about 1e-6.
PRIVATE_OP_TOLERANCE = 1e-5

_notes_given = set()


def _note_once(message):
    """A one-line note on stderr, once per process however many modules fall back."""
    if message not in _notes_given:
        _notes_given.add(message)
        print(f"fom: note: {message}", file=sys.stderr)


def relative_difference(fast, plain) -> float:
    """max |fast - plain| / max |plain| (nan when fast has NaNs that plain does not)."""
    largest = float(plain.abs().max()) if plain.numel() else 0.0
    return float((fast.float() - plain.float()).abs().max()) / max(largest, 1e-30) if plain.numel() else 0.0


class PrivateOpFallback:
    """For a module whose fast path calls private torch ops and which can compute the same with plain
    PyTorch (`_fast(x)` and `_plain(x)`): the first fast call is checked against the plain path on its
    own input, and any error or a difference above PRIVATE_OP_TOLERANCE switches the module to the plain
    path for good (`_give_up()`), with a note. Later errors fall back the same way."""

    description = "a private torch op"
    verified = False

    def _checked_fast(self, x):
        try:
            fast = self._fast(x)
        except Exception as error:  # a torch release that changed or dropped the op
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return self._fall_back(x, f"failed ({type(error).__name__}: {reason})")
        if not self.verified:
            plain = self._plain(x)
            difference = relative_difference(fast, plain)
            if not difference <= PRIVATE_OP_TOLERANCE:
                return self._fall_back(x, f"differs from plain PyTorch by {difference:.1e} (relative)", plain)
            self.verified = True
            self._verified()
        return fast

    def _fall_back(self, x, what, plain=None):
        _note_once(f"{self.description} {what} on this machine; using plain PyTorch convolutions instead "
                   f"(same results, slower)")
        self._give_up()
        return self._plain(x) if plain is None else plain

    def _verified(self):
        """Called once the fast path has matched the plain one: drop what only the check needed."""


class Conv(PrivateOpFallback, nn.Module):
    """A stride-1 convolution with an optional ReLU, for inference only.

    After `prepack()` the weights live in oneDNN's blocked layout (an mkldnn tensor) and CPU float32
    calls go straight to oneDNN with the ReLU fused; the plain weights are kept until the first such call
    has matched a plain convolution (PrivateOpFallback). The first call that oneDNN's fused kernel
    cannot take (autocast, another dtype) unpacks the weights for good, so a mismatch costs one reorder,
    not one per frame.
    """

    description = "oneDNN's prepacked convolution (a private torch op)"

    def __init__(self, weight, bias, padding, relu=False, groups=1):
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.padding = [int(p) for p in padding]
        self.relu = relu
        self.groups = groups
        self.packed = None

    @classmethod
    def like(cls, conv, relu=False):
        """From an nn.Conv2d (stride 1, no dilation, as every FOMM convolution is)."""
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError("only stride-1, undilated, zero-padded convolutions are rewritten")
        return cls(conv.weight, conv.bias, conv.padding, relu=relu, groups=conv.groups)

    def prepack(self):
        """Reorder the weights for oneDNN; where the private reorder fails, stay a plain convolution."""
        try:
            weight = self.weight.detach().contiguous().to_mkldnn()
            self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, self.padding, [1, 1], [1, 1],
                                                                    self.groups)
        except Exception as error:
            self.packed = None
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _note_once(f"{self.description} failed on this machine ({type(error).__name__}: {reason}); using "
                       f"plain PyTorch convolutions instead (same results, slower)")

    def forward(self, x):
        if self.packed is not None:
            if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
                return self._checked_fast(x)
            self._unpack()
        return self._plain(x)

    def _fast(self, x):
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, self.padding, [1, 1], [1, 1],
                                                       self.groups, "relu" if self.relu else "none", [], "")

    def _plain(self, x):
        out = F.conv2d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)
        return F.relu(out, inplace=True) if self.relu else out

    def _verified(self):
        self.weight = None   # one copy of the weights in memory, not two

    def _give_up(self):
        self._unpack()

    def _unpack(self):
        """Plain weights for good (from the packed ones when the check already dropped them)."""
        if self.weight is None:
            self.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        self.packed = None


def _amx_int8_available():
    """oneDNN's int8 convolution and a CPU with AMX int8 tiles, which make three-limb int8 products cheaper
    than one float32 product. Without AMX (AVX-512 VNNI, AVX2) the six products cost more than float32
    does, and oneDNN's int8 kernels there lose the exactness the split needs."""
    return (_cpu_prepack_available() and hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qconv_prepack")
            and hasattr(torch.cpu, "_is_amx_tile_supported") and torch.cpu._is_amx_tile_supported())


class Int8SplitConv(PrivateOpFallback, nn.Module):
    """A float32 convolution computed in integers on the CPU's int8 matrix units, to float32 accuracy
    (the Ozaki scheme, as used to emulate high-precision matrix products on low-precision hardware).

    Weights, per output channel, and the input, per sample, are scaled by powers of two to 24-bit
    fixed point and split into three 8-bit limbs, most significant first: x = 2^ex (x0 256^2 + x1 256
    + x2), w = 2^ew (w0 256^2 + w1 256 + w2). Every limb product is exact in int32. The six whose
    significance i + j is at most 2 are added into one float32 output by three oneDNN calls, one per
    significance, with the limbs concatenated along input channels ([x0 x1] with [w1 w0], ...). Each
    dropped product (x1 w2, x2 w1, x2 w2) is below 2^-23 of the largest possible product, the order of
    float32's own rounding, and like it, unbiased: on vox-256's bottleneck the result is 3e-7 from a
    float64 convolution, against 7e-7 for oneDNN's float32 one (tests check it against float64).

    The input limbs are unsigned, so a sample with negative values is shifted by its minimum m:
    conv(x) = conv(x - m) + m conv(1), where conv(1) (the convolution of an all-ones image, with the
    zero padding's borders) is computed once per input size. Scale and shift are each sample's own, so a
    dark frame keeps its precision next to a bright one, and a sample's result does not depend on the
    batch it came in. oneDNN scales its output per channel only, so the samples' input exponents are
    applied after it, as exact multiplications by powers of two, followed by bias and ReLU.

    It rests on oneDNN's private int8 ops (PrivateOpFallback): where they fail or their first result is
    off, it computes plain float32 convolutions with the weights rebuilt from the limbs.
    """

    description = "the int8 split convolution (private oneDNN ops)"
    LIMBS = 3
    SIGNIFICANCES = 3   # i + j = 0, 1, 2

    def __init__(self, weight, bias, padding, relu=False):
        super().__init__()
        weight = weight.detach().double()
        out_channels = weight.shape[0]
        # Per output channel, |w| / 2^ew <= 2^23 - 2^16, so that the top balanced digit fits in int8.
        largest = weight.abs().amax(dim=(1, 2, 3)).clamp(min=1e-300)
        exponent = torch.ceil(torch.log2(largest / (2.0 ** 23 - 2.0 ** 16)))
        integer = torch.round(weight / torch.exp2(exponent).view(-1, 1, 1, 1)).long()
        digits, rest = [], integer
        for _ in range(self.LIMBS - 1):  # balanced base-256 digits in [-128, 127], least significant first
            digit = torch.remainder(rest + 128, 256) - 128
            digits.append(digit)
            rest = torch.div(rest - digit, 256, rounding_mode="floor")
        digits = [rest] + digits[::-1]
        assert all(int(d.abs().max()) <= 128 and int(d.max()) <= 127 for d in digits)
        self.weight_exponent = nn.Parameter(exponent.float(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.padding = [int(p) for p in padding]
        self.relu = relu
        self.digits = [d.to(torch.int8) for d in digits]   # kept to rebuild float weights on a fallback
        self.packed = []
        for g in range(self.SIGNIFICANCES):
            group = torch.cat([self.digits[g - i] for i in self.input_limbs(g)], dim=1)
            self.packed.append(torch.ops.onednn.qconv_prepack(group, torch.ones(out_channels), 1.0, 0, [1, 1],
                                                              self.padding, [1, 1], 1, None))
        self.zero_points = torch.zeros(out_channels, dtype=torch.int64)
        self.ones_response = {}
        self.fallback_weight = None

    @classmethod
    def like(cls, conv):
        return cls(conv.weight, conv.bias, conv.padding, relu=conv.relu)

    def input_limbs(self, significance):
        """The input limbs i that pair with weight limbs significance - i."""
        return range(max(0, significance - self.LIMBS + 1), min(significance, self.LIMBS - 1) + 1)

    def float_weight(self):
        value = sum(d.double() * 256.0 ** (self.LIMBS - 1 - i) for i, d in enumerate(self.digits))
        return (value * torch.exp2(self.weight_exponent.double()).view(-1, 1, 1, 1)).float()

    def response_to_ones(self, height, width):
        """conv(1) without bias: what shifting the input by 1 adds to the output, borders included."""
        key = (height, width)
        if key not in self.ones_response:
            weight = self.float_weight().double()
            ones = torch.ones(1, weight.shape[1], height, width, dtype=torch.float64)
            self.ones_response[key] = F.conv2d(ones, weight, padding=self.padding).float().contiguous(
                memory_format=torch.channels_last)
        return self.ones_response[key]

    def forward(self, x):
        if self.packed and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            return self._checked_fast(x)
        # What oneDNN's int8 kernels cannot take (autocast, another dtype), or a machine where they failed:
        # a plain convolution, as Conv unpacks its own.
        return self._plain(x)

    def _plain(self, x):
        """A plain convolution with the weights rebuilt from their limbs once (to float32 rounding)."""
        if self.fallback_weight is None:
            self.fallback_weight = self.float_weight()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = F.conv2d(x, self.fallback_weight.to(x.dtype), bias, padding=self.padding)
        return F.relu(out) if self.relu else out

    def _verified(self):
        self.fallback_weight = None  # only the check needed it (autocast rebuilds it)

    def _give_up(self):
        self.packed = []

    def _fast(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        n, channels, height, width = x.shape
        low, high = torch.aminmax(x.permute(0, 2, 3, 1).reshape(n, -1), dim=1)   # channels_last memory is NHWC
        shifts = [min(value, 0.0) for value in low.tolist()]
        # x / 2^ex < 2^24 (span = f 2^k with f < 1): 24-bit fixed point, and rounding it is exact in float32.
        exponents = [math.frexp(max(top - shift, 1e-30))[1] - 8 * self.LIMBS
                     for top, shift in zip(high.tolist(), shifts)]
        shifted = any(shift < 0 for shift in shifts)
        if shifted:
            shift = torch.tensor(shifts, dtype=torch.float32).view(n, 1, 1, 1)
            x = x - shift
        fixed = x.mul(torch.tensor([2.0 ** -e for e in exponents], dtype=torch.float32).view(n, 1, 1, 1)).round_()
        if shifted:   # x - shift may round up past the span
            fixed.clamp_(max=256 ** self.LIMBS - 1)
        # The limbs are the int32's bytes (little-endian: byte 2 is the most significant limb): one
        # strided gather per oneDNN call instead of shifting and masking the whole tensor.
        fixed = fixed.to(torch.int32).permute(0, 2, 3, 1).contiguous()
        limbs = fixed.view(torch.uint8).view(n, height, width, channels, 4).unbind(-1)[self.LIMBS - 1::-1]
        out = None
        for g in range(len(self.packed)):
            used = [limbs[i] for i in self.input_limbs(g)]
            inputs = torch.stack(used, dim=3).view(n, height, width, len(used) * channels).permute(0, 3, 1, 2)
            scale = torch.exp2(self.weight_exponent + 8 * (2 * self.LIMBS - 2 - g))
            if out is None:
                out = torch.ops.onednn.qconv2d_pointwise(inputs, 1.0, 0, self.packed[g], scale, self.zero_points,
                                                         None, [1, 1], self.padding, [1, 1], 1, 1.0, 0,
                                                         torch.float32, "none", [], "")
            else:
                out = torch.ops.onednn.qconv2d_pointwise.binary(inputs, 1.0, 0, self.packed[g], scale,
                                                                self.zero_points, out, None, [1, 1], self.padding,
                                                                [1, 1], 1, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0,
                                                                "none", [], "")
        out.mul_(torch.tensor([2.0 ** e for e in exponents], dtype=torch.float32).view(n, 1, 1, 1))
        if shifted:
            out.add_(self.response_to_ones(height, width) * shift)
        if self.bias is not None:
            out.add_(self.bias.view(1, -1, 1, 1))
        return out.relu_() if self.relu else out


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

    def __init__(self, conv, relu=False):
        super().__init__()
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

    def __init__(self, block):
        super().__init__(folded_conv(block.conv, block.norm), relu=True)


def _rewrite(module, memory_format, split_rows):
    """Replace every foldable block below `module`, in place, converting weights to `memory_format` one
    block at a time (converting the whole network at the end would hold two copies of it at once)."""
    for name, child in module.named_children():
        if isinstance(child, DownBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm), pool=True)
        elif isinstance(child, SameBlock2d):
            replacement = ConvReLU(folded_conv(child.conv, child.norm))
        elif isinstance(child, UpBlock2d):
            replacement = SubpixelUpBlock(child)
        elif isinstance(child, ResBlock2d):
            replacement = FoldedResBlock(child)
        elif isinstance(child, AntiAliasInterpolation2d):
            replacement = StridedAntiAlias(child)
        elif isinstance(child, nn.Conv2d):
            few_outputs = child.out_channels <= ROWS_CONV_MAX_CHANNELS and child.kernel_size[0] > 1
            replacement = RowsConv(child) if few_outputs and split_rows else Conv.like(child)
        else:
            _rewrite(child, memory_format, split_rows)
            continue
        setattr(module, name, replacement.to(memory_format=memory_format))


def optimize_for_inference(network, channels_last=True, inplace=False, prepack=False):
    """`network` in eval mode with the exact rewrites above applied: a copy, or the network itself when
    `inplace` (saves holding two copies of the weights while loading). `prepack`: also reorder the
    convolution weights for oneDNN (for CPU float32 inference; ignored where oneDNN is missing or with
    FOM_NO_PRIVATE_OPS=1)."""
    network = (network if inplace else copy.deepcopy(network)).eval()
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
    with torch.no_grad():
        _rewrite(network, torch.channels_last if channels_last else torch.contiguous_format, split_rows=on_cpu)
        if prepack and on_cpu and _cpu_prepack_available() and private_ops_allowed():
            if _amx_int8_available():
                for module in network.modules():
                    if isinstance(module, FoldedResBlock) and module.conv1.weight[0].numel() >= INT8_SPLIT_MIN_FAN_IN:
                        try:
                            conv1, conv2 = Int8SplitConv.like(module.conv1), Int8SplitConv.like(module.conv2)
                        except Exception as error:  # the private int8 ops changed: oneDNN float32 stays
                            _note_once(f"{Int8SplitConv.description} could not be built ({type(error).__name__}); "
                                       f"using float32 convolutions")
                            break
                        module.conv1, module.conv2 = conv1, conv2
            for module in network.modules():
                if isinstance(module, Conv):
                    module.prepack()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network
