"""The fast pipeline computes what the straightforward path computes; memory stays flat while streaming.
Speed itself is measured by `fom bench`, never asserted here."""

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, make_clip, run_cli
from fom_cli.animation import Animator
from fom_cli.commands.bench import pipeline_animation, random_networks, straightforward_animation, synthetic_frames
from fom_cli.config import load_config
from fom_cli.models.blocks import AntiAliasInterpolation2d
from fom_cli.models.inference import RowsConv, StridedAntiAlias, optimize_for_inference
from fom_cli.models.private_ops import Conv, Int8SplitConv, amx_int8_available


@pytest.mark.parametrize("prepack", [False, True], ids=["rewrites", "rewrites-prepacked"])
def test_rewrites_are_exact_on_vox_256_shapes_with_random_weights(prepack):
    config = load_config("vox-256")
    kp_detector, generator = random_networks(config, seed=1)
    frames = synthetic_frames(4, (256, 256), seed=1)
    source, driving = frames[0], frames[1:]
    expected = straightforward_animation(kp_detector, generator, source, driving, device=kp_detector.kp.weight.device)
    animator = Animator(optimize_for_inference(kp_detector, prepack=prepack),
                        optimize_for_inference(generator, prepack=prepack), source)
    ours = pipeline_animation(animator, driving, batch_size=2)
    assert ours.shape == expected.shape == (3, 256, 256, 3)
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(expected[2] - expected[0]).max() > 1e-3  # the frames really differ


def test_rows_convolution_and_prepacked_weights_compute_the_same_function():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 20, 24).contiguous(memory_format=torch.channels_last)
    for out_channels in (1, 3):
        conv = nn.Conv2d(16, out_channels, kernel_size=7, padding=3)
        rows = RowsConv(conv)
        with torch.inference_mode():
            expected = conv(x)
            assert (rows(x) - expected).abs().max() < 1e-5
            for module in rows.modules():
                if isinstance(module, Conv):
                    module.prepack()
            assert (rows(x) - expected).abs().max() < 1e-5


# The split is exact only where oneDNN runs its int8 products on AMX tiles, which is also the only place
# the pipeline uses it; elsewhere (AVX-512 VNNI here) oneDNN's int8 kernels lose precision.
@pytest.mark.skipif(not amx_int8_available(), reason="needs oneDNN's int8 convolution on AMX tiles")
def test_int8_split_convolution_matches_float32_against_float64():
    torch.manual_seed(0)
    # (in, out, kernel, padding, relu, signed input, batch, size): the bottleneck's shape, a sub-pixel
    # 2x2 kernel, a signed input (shifted by its minimum) at an odd size, a 7x7 kernel.
    cases = [(256, 256, 3, 1, True, False, 1, 64), (64, 128, 2, 1, True, True, 2, 33), (16, 8, 7, 3, False, False, 1, 20)]
    for in_channels, out_channels, kernel, padding, relu, signed, batch, size in cases:
        weight = torch.randn(out_channels, in_channels, kernel, kernel) / (in_channels * kernel ** 2) ** 0.5
        bias = torch.randn(out_channels) * 0.1
        x = torch.randn(batch, in_channels, size, size) * 3
        x = x if signed else x.relu()
        split = Int8SplitConv(weight, bias, (padding, padding), relu=relu)
        activation = torch.relu if relu else (lambda t: t)
        with torch.inference_mode():
            exact = activation(F.conv2d(x.double(), weight.double(), bias.double(), padding=padding))
            float32 = activation(F.conv2d(x, weight, bias, padding=padding))
            ours = split(x)
            assert ours.dtype == torch.float32 and ours.shape == exact.shape
            # float32 rounding is about 1e-7 of the largest value; the split stays within 16 of its units
            assert (ours.double() - exact).abs().max() <= 2e-6 * exact.abs().max()
            assert (float32.double() - exact).abs().max() <= 2e-6 * exact.abs().max()
            # an all-zero input gives the bias (through the ReLU), not NaN from a zero scale
            assert torch.equal(split(torch.zeros_like(x)), activation(bias.view(1, -1, 1, 1).expand_as(ours)))
            # under autocast it falls back to a plain convolution in the autocast precision
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert (split(x).float() - float32).abs().max() <= 0.05 * float32.abs().max()


@pytest.mark.skipif(not amx_int8_available(), reason="the int8 split is used on CPUs with AMX int8 only")
def test_prepacked_generator_uses_the_int8_split_where_it_pays():
    def split_blocks(config):
        _, generator = random_networks(load_config(config), seed=0)
        fast = optimize_for_inference(generator, prepack=True)
        assert len(fast.bottleneck) > 0
        return [isinstance(block.conv1, Int8SplitConv) and isinstance(block.conv2, Int8SplitConv)
                for block in fast.bottleneck]

    assert all(split_blocks("vox-256"))          # 256 channels: faster
    assert not any(split_blocks(SMALL_CONFIG))   # narrow blocks stay float32


def test_strided_anti_aliasing_keeps_the_same_pixels():
    torch.manual_seed(0)
    for scale in (0.5, 0.25, 0.125):
        block = AntiAliasInterpolation2d(3, scale)
        for height, width in ((64, 64), (67, 50)):   # sizes that do not divide evenly too
            x = torch.rand(2, 3, height, width)
            expected = block(x)
            ours = StridedAntiAlias(block)(x)
            assert ours.shape == expected.shape
            assert (ours - expected).abs().max() < 1e-6


def test_prepacked_convolution_falls_back_under_autocast():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel_size=3, padding=1)
    plain, packed = Conv.like(conv, relu=True), Conv.like(conv, relu=True)
    packed.prepack()
    x = torch.randn(1, 8, 10, 10)
    with torch.inference_mode():
        assert (packed(x) - plain(x)).abs().max() < 1e-6         # oneDNN with the ReLU fused
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(packed(x), plain(x))               # the unpacked weights, in bfloat16
        assert packed.packed is None                              # unpacked once, for good
        assert torch.equal(packed(x), plain(x))


def test_bench_reports_speedup_difference_flops_and_memory(capsys):
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--frames", "4", "--repeats", "2",
                              "--precision", "fp32", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["max_abs_difference"] <= 1e-4
    # The ratios are those of the rates they are made of (the fastest repeats, and the medians).
    assert report["repeats"] == 2
    assert report["speedup"] == pytest.approx(report["pipeline_fps"] / report["straightforward_fps"])
    assert report["speedup_median"] == pytest.approx(report["pipeline_fps_median"] /
                                                     report["straightforward_fps_median"])
    # Source-side work and the sub-pixel up blocks are gone from the per-frame cost.
    assert 0 < report["pipeline_gflop_per_frame"] < report["gflop_per_frame"]
    achieved = report["pipeline_gflop_per_frame"] * report["pipeline_fps"]
    assert report["pipeline_gflops_per_s"] == pytest.approx(achieved)
    assert report["share_of_conv_throughput"] == pytest.approx(achieved / report["conv_gflops_per_s"])
    # Peak memory holds at least the weights and frames: more than the interpreter alone (about 10 MiB).
    assert report["peak_rss_mib"] > 50


def test_bench_takes_fp16_on_the_cpu_as_animate_does_with_the_same_note(capsys, monkeypatch):
    """`fom animate --precision fp16` runs on the CPU with a note; `fom bench` refused it."""
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)  # all but Granite Rapids
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--frames", "2", "--repeats", "1",
                              "--precision", "fp16", "--device", "cpu", "--no-baseline", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["precision"] == "fp16"
    assert "note: --precision fp16 runs slower than fp32 on this CPU" in err


def test_bench_rejects_zero_repeats(capsys):
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--repeats", "0"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--repeats" in err


def rss_mib():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * 4096 / 2 ** 20


def peak_rss_during(function):
    """Run `function` while sampling this process's resident memory; return the highest sample."""
    samples, done = [rss_mib()], threading.Event()

    def sample():
        while not done.wait(0.005):
            samples.append(rss_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    return max(samples)


def test_memory_does_not_grow_with_the_video_length(tmp_path):
    import imageio.v3 as iio

    frames = np.stack([iio.imread(p) for p in sorted((PARITY / "small-driving").glob("*.png"))])
    short = make_clip(tmp_path / "short.mp4", np.concatenate([frames] * 8)[:60], fps=25, tone=False)
    long = make_clip(tmp_path / "long.mp4", np.concatenate([frames] * 40), fps=25, tone=False)  # 320 frames
    model = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]

    def animate(driving, output):
        assert run_cli(["animate", PARITY / "small-source.png", driving, "-o", output, *model]) == 0

    animate(short, tmp_path / "warm-up.mp4")  # allocator and thread pools settle
    peak_short = peak_rss_during(lambda: animate(short, tmp_path / "short-out.mp4"))
    peak_long = peak_rss_during(lambda: animate(long, tmp_path / "long-out.mp4"))
    # Holding the 260 extra predictions would take 260 x 192 KiB = 49 MiB, and as much for the driving frames.
    assert peak_long - peak_short < 25, (peak_short, peak_long)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_agree_in_float32():
    import imageio.v3 as iio

    from conftest import driving_frames
    from fom_cli.families import load_networks
    from fom_cli.config import load_config

    driving = driving_frames().astype(np.float32) / 255
    source = iio.imread(PARITY / "small-source.png").astype(np.float32) / 255
    results = {}
    for device in ("cpu", "cuda"):
        networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), device=device)
        kp_detector, generator = networks.kp_detector, networks.generator
        results[device] = pipeline_animation(Animator(kp_detector, generator, source), driving, batch_size=4)
    assert np.abs(results["cuda"] - results["cpu"]).max() <= 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_pipeline_matches_the_plain_one_on_cuda():
    import imageio.v3 as iio

    from conftest import driving_frames
    from fom_cli.families import load_networks

    driving = driving_frames().astype(np.float32) / 255
    source = iio.imread(PARITY / "small-source.png").astype(np.float32) / 255
    results = {}
    # Full float32 on both sides: with TF32 convolutions (cuDNN's default) the compiled and the plain
    # kernels round differently, which says nothing about whether they compute the same function.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for compile in (False, True):
            networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), device="cuda",
                                                      compile=compile)
            kp_detector, generator = networks.kp_detector, networks.generator
            results[compile] = pipeline_animation(Animator(kp_detector, generator, source), driving, batch_size=4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert generator.decode.compiled is not None, "torch.compile fell back to plain PyTorch"
    assert np.abs(results[True] - results[False]).max() <= 1e-4


def test_a_failing_compiler_falls_back_to_plain_pytorch_once_with_a_warning():
    from fom_cli.runtime import CompiledOrEager

    calls = []

    def broken_backend(graph, example_inputs):
        calls.append(1)
        raise RuntimeError("no compiler here")

    doubled = CompiledOrEager(lambda x: x * 2, "doubler", backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed for the doubler.*running it uncompiled"):
        assert torch.equal(doubled(torch.ones(3)), torch.full((3,), 2.0))
    assert doubled.compiled is None and calls == [1]
    assert torch.equal(doubled(torch.ones(2)), torch.full((2,), 2.0))   # no second attempt, no warning
    assert calls == [1]


def test_keypoint_motion_stays_float32_under_autocast():
    # GPUs have no bf16/fp16 matrix inverse, and bf16 grid coordinates are off by pixels: the sparse
    # motions must be computed in float32 whatever autocast says (the CPU's autocast shows the dtype too).
    from fom_cli.animation import relative_motion
    from fom_cli.families import load_networks

    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), optimize=False)
    generator = networks.generator
    dense_motion = generator.dense_motion_network
    rng = torch.Generator().manual_seed(0)
    num_kp = dense_motion.num_kp

    def keypoints(n):
        return {"value": torch.rand(n, num_kp, 2, generator=rng) * 2 - 1,
                "jacobian": torch.eye(2) + 0.2 * torch.randn(n, num_kp, 2, 2, generator=rng)}

    kp_driving, kp_source, kp_initial = keypoints(3), keypoints(1), keypoints(1)
    expected = dense_motion.sparse_motions(16, 16, kp_driving, kp_source)
    expected_moved = relative_motion(kp_source, kp_driving, kp_initial, scale=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dense_motion.sparse_motions(16, 16, kp_driving, kp_source)
        moved = relative_motion(kp_source, kp_driving, kp_initial, scale=0.9)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    for key in ("value", "jacobian"):
        assert moved[key].dtype == torch.float32
        assert torch.equal(moved[key], expected_moved[key])
