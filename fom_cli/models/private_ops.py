"""Convolutions on torch's private CPU ops, for inference, each inside a fallback to plain PyTorch.

- On CPU in float32, every convolution's weights are reordered once into oneDNN's blocked layout
  (`Conv.prepack`), instead of on every call, and the ReLU that follows runs inside the convolution.
  This matters most for the hourglasses' deep levels: 1024 channels at 4x4 to 16x16 pixels, where the
  per-call reorder of a 38 MB weight tensor cost more than the arithmetic.
- On CPUs with AMX int8 tiles, the residual blocks' convolutions of 256 channels and more (vox-256's
  bottleneck, half of all its FLOPs) run as Int8SplitConv: float32 numbers split into three 8-bit limbs
  whose products are exact on the int8 matrix units: faster than oneDNN's float32 convolution there, and
  as close to float64 (README: measured speeds).

Both rest on private torch ops (torch._C._nn.mkldnn_reorder_conv2d_weight, torch.ops.mkldnn and
torch.ops.onednn), which a torch release may change or drop. So each is built inside a fallback to plain
PyTorch (PrivateOpFallback), and its first call is checked against the plain path on that call's own
input: an error, or a result more than 1e-5 (relative) away, switches the module to plain PyTorch for
good, with a one-line note. FOM_NO_PRIVATE_OPS=1 leaves them out altogether. models/inference.py decides
where they are used.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn


def private_ops_allowed():
    """False when the user opted out of torch's private CPU ops with FOM_NO_PRIVATE_OPS=1."""
    return os.environ.get("FOM_NO_PRIVATE_OPS", "").strip().lower() not in ("1", "true", "yes", "on")


def cpu_prepack_available():
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# How far (max |fast - plain| / max |plain|) a private op's first result may be from plain PyTorch's. Both
# are float32 convolutions, which agree to about 1e-6.
PRIVATE_OP_TOLERANCE = 1e-5

_notes_given = set()


def note_once(message):
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
        note_once(f"{self.description} {what} on this machine; using plain PyTorch convolutions instead "
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
        if not private_ops_allowed():  # checked here so that every caller (FOMM's, TPSMM's) honours it
            return
        try:
            weight = self.weight.detach().contiguous().to_mkldnn()
            self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, self.padding, [1, 1], [1, 1],
                                                                    self.groups)
        except Exception as error:
            self.packed = None
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            note_once(f"{self.description} failed on this machine ({type(error).__name__}: {reason}); using "
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


def amx_int8_available():
    """oneDNN's int8 convolution and a CPU with AMX int8 tiles, which make three-limb int8 products cheaper
    than one float32 product. Without AMX (AVX-512 VNNI, AVX2) the six products cost more than float32
    does, and oneDNN's int8 kernels there lose the exactness the split needs."""
    return (cpu_prepack_available() and hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qconv_prepack")
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
