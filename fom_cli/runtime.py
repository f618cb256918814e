"""Where and how the networks run: the device, the batch size, reduced precision, torch.compile, and
frames handed to the networks as tensors. Shared by both families' animators and by training."""

import contextlib
import dataclasses
import importlib
import io
import logging
import os
import warnings

import numpy as np
import torch

from fom_cli.errors import FomError
from fom_cli.media.images import check_image_array

# --precision name -> the dtype networks autocast to (None: plain float32). "auto" is resolved first
# (choose_precision).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class CpuPrecisions:
    """Which reduced precisions this CPU computes natively (faster than float32), and in a few words why."""
    bf16: bool
    fp16: bool
    why: str


def cpu_precisions():
    """What torch reports of this CPU (cpuinfo's flags), within what oneDNN is allowed to use.

    bf16 is native with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) or AMX-BF16 (Intel Sapphire
    Rapids and later), fp16 with AMX-FP16 (Granite Rapids). Elsewhere oneDNN converts to float32 and back
    around every operation, which is slower than float32. ONEDNN_MAX_CPU_ISA, which caps the instructions
    oneDNN uses, counts: a cap below those ISAs makes them emulated too. torch before 2.5 does not report
    these flags: nothing counts as native there."""
    flag = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    avx512_bf16, amx, amx_fp16 = (flag("_is_avx512_bf16_supported"), flag("_is_amx_tile_supported"),
                                  flag("_is_amx_fp16_supported"))
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in ("ALL", "DEFAULT"):
        # oneDNN's ISA names say what they add: AVX512_CORE_BF16, AVX512_CORE_AMX(_FP16), AVX10_1_512(_AMX...).
        allows_bf16 = any(part in cap for part in ("BF16", "FP16", "AMX", "AVX10"))
        amx = amx and "AMX" in cap
        amx_fp16 = amx_fp16 and ("AMX_FP16" in cap or "AMX_2" in cap)
        avx512_bf16 = avx512_bf16 and allows_bf16
    if amx:
        why = "AMX-FP16 and AMX-BF16" if amx_fp16 else "AMX-BF16"
    elif avx512_bf16:
        why = "AVX512-BF16"
    elif hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        why = "no bf16 instructions" + (f" within ONEDNN_MAX_CPU_ISA={cap}" if cap else "")
    else:
        why = f"torch {torch.__version__.split('+')[0]} does not report the CPU's bf16 instructions"
    return CpuPrecisions(bf16=amx or avx512_bf16, fp16=amx and amx_fp16, why=why)


def cpu_name():
    """The processor's model name, for reports (a figure means little without it)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def choose_precision(requested, device):
    """(precision, why) for --precision `requested` on `device`. "auto": bf16 on a CPU that computes it
    natively (the networks keep what steers every pixel in float32: blocks.output_head, the animators),
    fp16 on CUDA (the fastest measured on an H200: 1,012 frames/s against 772 in fp32 at batch 32, max
    difference 0.00027), float32 elsewhere."""
    device = torch.device(device)
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        return "fp16", "auto: the fastest on CUDA GPUs as measured, within 0.0003 of fp32"
    if device.type == "cpu":
        cpu = cpu_precisions()
        if cpu.bf16:
            return "bf16", f"auto: this CPU computes bf16 natively ({cpu.why}); --precision fp32 for exact float32"
        return "fp32", f"auto: {cpu.why} on this CPU, where bf16 would be slower than fp32"
    return "fp32", f"auto: float32 on {device.type}"


def pick_device(name="auto"):
    """The torch device for --device NAME, checked before anything is loaded onto it: FomError (one line)
    for a name torch does not know, or a device this machine does not have."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise FomError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FomError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FomError(f"--device {name}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                           f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise FomError(f"--device {name}: Apple's MPS is not available on this machine (use --device cpu)")
        return device
    raise FomError(f"--device {name}: fom runs on cpu, cuda or mps, not {device.type}")


def default_batch_size(device):
    """Driving frames per forward pass. GPUs need large batches to fill up (README: measured speeds); on a
    CPU the keypoint detector and the dense motion network still gain from 8 (see Animator for the
    decoder)."""
    return 32 if torch.device(device).type == "cuda" else 8


class CompiledOrEager:
    """`torch.compile(function)`, or the plain function once compiling it has failed.

    torch.compile returns at once and only finds out at the first call whether it can compile (a missing
    C++ compiler, an unsupported op, an old GPU), so the fallback has to happen there, with one warning.
    """

    def __init__(self, function, name, backend="inductor"):
        self.function = function
        self.name = name
        self.compiled = torch.compile(function, backend=backend)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - whatever broke, the plain function still works
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed for the {self.name} ({type(error).__name__}: {reason}); "
                              "running it uncompiled")
                self.compiled = None
        return self.function(*args, **kwargs)


def silence_cuda_home_warning():
    """Compiling imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on machines that
    have a CUDA toolkit but no GPU: nothing fom does needs that runtime, so the line would only confuse."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):  # torch before 2.5 prints the line instead of logging it
        importlib.import_module("torch.utils.cpp_extension")


def float_frames(frames, what="frames"):
    """(N, H, W, 3) or (H, W, 3) frames, uint8 or float in [0, 1] (checked), as float32 in [0, 1]."""
    frames = check_image_array(frames, what)
    return frames.astype(np.float32) / 255 if frames.dtype == np.uint8 else frames.astype(np.float32, copy=False)


def to_tensor(frames, device):
    """(N, H, W, 3) or (H, W, 3) frames, uint8 or float [0, 1] numpy -> (N, 3, H, W) float32 tensor."""
    frames = float_frames(frames)
    if frames.ndim == 3:
        frames = frames[None]
    tensor = torch.from_numpy(frames)
    if torch.device(device).type == "cuda":
        # Page-locked memory: the copy to the GPU is one DMA transfer instead of two staged copies.
        return tensor.pin_memory().to(device, non_blocking=True).permute(0, 3, 1, 2)
    return tensor.permute(0, 3, 1, 2).to(device)
