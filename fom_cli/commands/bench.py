"""Measure animation speed and memory: `fom bench animate`.

Random weights (seeded) and synthetic frames, no file I/O. Reports, in one run, the frames/s of

  (a) the straightforward path: per driving frame, the keypoint detector and the whole generator on the
      source image, as the original demo does (everything about the source recomputed every frame);
  (b) fom's pipeline: the source prepared once, the exact inference rewrites, frames in batches;

their ratio (each path's fastest of `--repeats` runs, the two paths taking turns; the medians too; a
warning when the median run took over 1.5x the fastest: a busy machine), the max abs difference of their
outputs (the straightforward path runs in fp32: with --precision bf16 this is bf16's difference from
fp32), the precision and why (`--precision auto`, the default, and the CPU's native bf16), GFLOP per frame, the achieved share of this machine's
3x3-convolution throughput in the same precision (above 1 where the residual blocks run on the
CPU's int8 matrix units: `int8_split_convolutions` counts them), and peak RSS. `--video PATH` times the whole
`fom animate` path (decode, fit, animate, encode) on a real file instead. `--json` prints one JSON object.

A TPSMM config (`--config tpsmm-vox-256`) compares the original demo's make_animation loop (per driving
frame: the keypoint detector, then the dense motion and inpainting networks on the whole source) with
fom's TpsAnimator in the same way.
"""

import copy
import json
import logging
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fom_cli.animation import Animator, compile_networks, movement_scale, relative_motion
from fom_cli.commands import note_cpu_speed
from fom_cli.config import config_family, frame_size, load_config
from fom_cli.engine import AnimationOptions, animate_file
from fom_cli.errors import FomError
from fom_cli.families import FAMILIES, Networks
from fom_cli.media.images import write_image
from fom_cli.media.video_in import probe
from fom_cli.models import build_generator, build_keypoint_detector
from fom_cli.models.inference import optimize_for_inference
from fom_cli.models.private_ops import Int8SplitConv
from fom_cli.options import BACKENDS, add_batch_size, add_config, add_device, add_precision, add_quiet, positive_int
from fom_cli.runtime import (AUTOCAST_DTYPES, choose_precision, cpu_name, cpu_precisions, default_batch_size, pick_device,
                             to_tensor)

log = logging.getLogger("fom_cli")
# A median run this much slower than the fastest means another process took the CPU for a while.
BUSY_MACHINE_SPREAD = 1.5


def configure_parser(parser):
    parser.add_argument("what", choices=["animate"], help="what to measure")
    add_config(parser, "config name or YAML path (default vox-256)", default="vox-256")
    add_device(parser, default="cpu")
    parser.add_argument("--size", type=positive_int, help="frame size in pixels (default: the config's)")
    parser.add_argument("--frames", type=positive_int, default=8, help="driving frames to time (default 8)")
    add_batch_size(parser, "fom pipeline batch (default 8 on CPU, 32 on CUDA)")
    add_precision(parser, "precision of fom's pipeline (default auto, as `fom animate` picks it; the report says "
                          "which and why); the straightforward path always runs in fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the pipeline's networks")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="onnxruntime: also time the same pipeline through onnxruntime (the graphs of fom export "
                             "--onnx), beside torch's, in the same run (default: torch alone)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the straightforward path")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs of each path, taking turns; the fastest counts (default 3)")
    parser.add_argument("--video", help="time the whole `fom animate` path on this driving video instead")
    parser.add_argument("--paste-back", action="store_true",
                        help="with --video: animate as `fom animate --face` (driving face followed, faces pasted "
                             "back) and report the share of that face work in the networks' time")
    parser.add_argument("--source", metavar="PHOTO",
                        help="with --video: the source image (default: a synthetic frame; --paste-back needs a "
                             "photo with a face)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet(parser, "no progress bar (with --video)")


def randomize_(network, generator):
    """Perturb weights and BatchNorm statistics so that no rewrite can hide behind identity BN."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.add_(0.05 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.05 * torch.randn(module.bias.shape, generator=generator))
    return network


def random_networks(config, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    kp_detector = randomize_(build_keypoint_detector(config["model_params"]), generator).eval()
    image_generator = randomize_(build_generator(config["model_params"]), generator).eval()
    return kp_detector, image_generator


def synthetic_frames(count, size, seed):
    """Smooth random images (low-frequency noise upsampled), float32 (count, H, W, 3) in [0, 1]."""
    rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=rng)
    frames = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def peak_rss_mib():
    import resource  # POSIX only: imported here so that the CLI itself imports on any OS

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def straightforward_animation(kp_detector, generator, source, driving, device):
    """The original demo's loop (relative motion, adapt-scale): one frame at a time, the source
    re-encoded by every generator call."""
    outputs = []
    with torch.no_grad():
        source = torch.tensor(source[None]).permute(0, 3, 1, 2).contiguous().to(device)
        kp_source = kp_detector(source)
        kp_initial = kp_detector(torch.tensor(driving[:1]).permute(0, 3, 1, 2).contiguous().to(device))
        scale = movement_scale(kp_source, kp_initial)
        for frame in driving:
            frame = torch.tensor(frame[None]).permute(0, 3, 1, 2).contiguous().to(device)
            kp_driving = relative_motion(kp_source, kp_detector(frame), kp_initial, scale)
            outputs.append(generator(source, kp_driving=kp_driving, kp_source=kp_source)["prediction"])
    return torch.cat(outputs).permute(0, 2, 3, 1).cpu().numpy()


def pipeline_animation(animator, driving, batch_size):
    animator.set_initial_frame(driving[0])
    return animator.animate_all(driving, batch_size)


def race(pipeline, straightforward, args, device, report, onnxruntime=None):
    """Time the paths taking turns, `--repeats` times each, so that a slow spell of the machine (other
    processes, clock changes) hits all of them; each path's fastest run is its speed, as timeit reports. Adds
    the pipeline's frames/s to `report` and, unless --no-baseline, the straightforward path's, their ratio and
    the largest difference between the two paths' frames; with `onnxruntime` (the same pipeline on the
    onnxruntime backend), its frames/s, its ratio to the torch pipeline's, and its largest difference from the
    straightforward path's frames (from the torch pipeline's with --no-baseline)."""
    seconds = {"pipeline": [], "straightforward": [], "onnxruntime": []}
    slow = None
    for _ in range(args.repeats):
        fast, elapsed = timed(pipeline, device)
        seconds["pipeline"].append(elapsed)
        if not args.no_baseline:
            slow, elapsed = timed(straightforward, device)
            seconds["straightforward"].append(elapsed)
        if onnxruntime is not None:
            other, elapsed = timed(onnxruntime, device)
            seconds["onnxruntime"].append(elapsed)
    report["repeats"] = args.repeats
    if onnxruntime is not None:
        report["onnxruntime_fps"] = args.frames / min(seconds["onnxruntime"])
        report["onnxruntime_fps_median"] = args.frames / float(np.median(seconds["onnxruntime"]))
        report["onnxruntime_vs_torch"] = report["onnxruntime_fps"] / (args.frames / min(seconds["pipeline"]))
        report["onnxruntime_max_abs_difference"] = float(np.abs(other - (fast if slow is None else slow)).max())
    fastest, median = min(seconds["pipeline"]), float(np.median(seconds["pipeline"]))
    if median > BUSY_MACHINE_SPREAD * fastest:
        log.warning(f"the median run took {median / fastest:.1f}x as long as the fastest: something else is "
                    "using this machine, and these figures are not its speed (run again when it is idle)")
        report["busy_machine"] = True
    report["pipeline_fps"] = args.frames / min(seconds["pipeline"])
    report["pipeline_fps_median"] = args.frames / float(np.median(seconds["pipeline"]))
    if not args.no_baseline:
        report["straightforward_fps"] = args.frames / min(seconds["straightforward"])
        report["straightforward_fps_median"] = args.frames / float(np.median(seconds["straightforward"]))
        report["speedup"] = report["pipeline_fps"] / report["straightforward_fps"]
        report["speedup_median"] = report["pipeline_fps_median"] / report["straightforward_fps_median"]
        report["max_abs_difference"] = float(np.abs(fast - slow).max())


def timed(function, device):
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def gflop_per_frame(kp_detector, generator, source, frame, device):
    """FLOPs of one driving frame through the keypoint detector and the generator (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    source_tensor, frame_tensor = to_tensor(source, device), to_tensor(frame, device)
    with torch.no_grad(), counter:
        kp_source = kp_detector(source_tensor)
        kp_driving = kp_detector(frame_tensor)
        generator(source_tensor, kp_driving=kp_driving, kp_source=kp_source)
    total = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as source_only:
        kp_detector(source_tensor)
    return (total - source_only.get_total_flops()) / 1e9


def pipeline_gflop_per_frame(animator, frame):
    # The Animator runs under inference_mode, where FlopCounterMode of torch 2.4 counts nothing; no_grad
    # runs the same operations and is counted by every release.
    with mock.patch.object(torch, "inference_mode", torch.no_grad), FlopCounterMode(display=False) as counter:
        animator.animate(frame[None])
    return counter.get_total_flops() / 1e9


def conv_throughput_gflops(device, repeats=5, dtype=None):
    """This machine's sustained rate on a 3x3 convolution in channels_last (GFLOP/s): the roofline, in
    the pipeline's precision (`dtype` None: float32), since bf16/fp16 run on other units than float32."""
    dtype = dtype or torch.float32
    x = torch.rand(4, 256, 64, 64, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flop = 2 * 4 * 256 * 256 * 9 * 64 * 64
    with torch.no_grad():
        F.conv2d(x, weight, padding=1)
        times = []
        for _ in range(repeats):
            _, seconds = timed(lambda: F.conv2d(x, weight, padding=1), device)
            times.append(seconds)
    return flop / np.median(times) / 1e9


def add_conv_share(report, device, precision):
    """This machine's 3x3 conv rate in the pipeline's precision, and the share of it the pipeline reaches."""
    report["conv_gflops_per_s"] = conv_throughput_gflops(device, dtype=AUTOCAST_DTYPES[precision])
    if report.get("pipeline_gflop_per_frame"):
        achieved = report["pipeline_gflop_per_frame"] * report["pipeline_fps"]
        report["pipeline_gflops_per_s"] = achieved
        report["share_of_conv_throughput"] = achieved / report["conv_gflops_per_s"]


def bench_setup(args, config, device):
    """What both families' benches start from: the report's settings, the batch size, and the synthetic
    source and driving frames."""
    size = (args.size, args.size) if args.size else frame_size(config)
    batch_size = args.batch_size or default_batch_size(device)
    frames = synthetic_frames(args.frames + 1, size, args.seed)
    report = {"config": config["_name"], "device": str(device), "size": list(size), "frames": args.frames,
              "batch_size": batch_size, "precision": args.precision, "compile": args.compile,
              "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    return report, batch_size, frames[0], frames[1:]


def bench_pipeline(args, config, device):
    if config_family(config) == "tpsmm":
        return bench_tpsmm_pipeline(args, config, device)
    kp_detector, generator = random_networks(config, args.seed)
    kp_detector, generator = kp_detector.to(device), generator.to(device)
    report, batch_size, source, driving = bench_setup(args, config, device)

    prepack = device.type == "cpu" and args.precision == "fp32" and not args.compile   # as load_model does
    fast_kp = optimize_for_inference(kp_detector, prepack=prepack)
    fast_generator = optimize_for_inference(generator, prepack=prepack)
    if args.compile:
        compile_networks(fast_kp, fast_generator)
    # On CPUs with AMX the residual blocks run as int8 limb products (Int8SplitConv): their
    # FLOPs then come from the int8 units, and the share of the float32 conv rate can exceed 1.
    report["int8_split_convolutions"] = sum(isinstance(module, Int8SplitConv) for module in fast_generator.modules())
    animator = Animator(fast_kp, fast_generator, source, precision=args.precision)
    pipeline_animation(animator, driving[:batch_size], batch_size)  # warm-up (and compilation)
    if args.compile:
        # False where torch.compile failed and the pipeline fell back to plain PyTorch (with a warning).
        report["compiled"] = all(function.compiled is not None for function in (
            fast_kp.forward, fast_generator.dense_motion_network.motion, fast_generator.animate_features,
            fast_generator.decode))
    if not args.no_baseline:
        straightforward_animation(kp_detector, generator, source, driving[:1], device)  # warm-up

    onnx = onnx_animation(args, config, kp_detector, generator, device, source, driving, batch_size, report)
    race(lambda: pipeline_animation(animator, driving, batch_size),
         lambda: straightforward_animation(kp_detector, generator, source, driving, device),
         args, device, report, onnx)
    # FLOPs are counted on the same rewrites without oneDNN prepacking, whose fused ops the counter cannot see.
    counted = Animator(optimize_for_inference(kp_detector), optimize_for_inference(generator), source,
                       precision=args.precision)
    counted.set_initial_frame(driving[0])
    report["pipeline_gflop_per_frame"] = pipeline_gflop_per_frame(counted, driving[0])
    del counted

    if not args.no_baseline:
        report["gflop_per_frame"] = gflop_per_frame(kp_detector, generator, source, driving[0], device)

    add_conv_share(report, device, args.precision)
    report["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return report


def onnx_networks(config, kp_detector, generator, device, folder, size=None, profile=False):
    """The onnxruntime backend on copies of the (random) networks, exported into `folder` for frames of
    `size` (height, width; default the config's: the graphs' frame size is fixed)."""
    from fom_cli.onnx_backend import OnnxNetworks
    from fom_cli.onnx_graphs import make_portable, write_graphs

    if size is not None and tuple(size) != frame_size(config):
        config = dict(config, dataset_params=dict(config.get("dataset_params") or {}, frame_shape=[*size, 3]))
    family = FAMILIES[config_family(config)]
    networks = Networks(config, copy.deepcopy(kp_detector).cpu(), copy.deepcopy(generator).cpu(), family)
    write_graphs(make_portable(networks), folder)
    return OnnxNetworks(folder, device, profile=profile)


def onnx_animation(args, config, kp_detector, generator, device, source, driving, batch_size, report):
    """With --backend onnxruntime: the function race() times for the onnxruntime backend (warmed up), else
    None."""
    if args.backend != "onnxruntime":
        return None
    folder = tempfile.TemporaryDirectory(prefix="fom-bench-onnx-")   # removed when the process ends
    networks = onnx_networks(config, kp_detector, generator, device, folder.name, source.shape[:2], profile=True)
    animator = networks.animator(source)
    animator.graphs_folder = folder
    pipeline_animation(animator, driving[:batch_size], batch_size)  # warm-up, profiled
    placement = networks.node_placement()
    report["onnxruntime"] = {"version": __import__("onnxruntime").__version__,
                             "providers": networks.sessions["frame"].get_providers(), "nodes_per_provider": placement}
    on_cpu = sum(counts.get("CPUExecutionProvider", 0) for counts in placement.values())
    if device.type != "cpu" and on_cpu:
        log.warning(f"onnxruntime ran {on_cpu} nodes on the CPU instead of {device} (report: onnxruntime."
                    "nodes_per_provider); each costs a copy there and back")
    return lambda: pipeline_animation(animator, driving, batch_size)


# --- TPSMM ------------------------------------------------------------------------------------------------

def random_tps_networks(config, seed):
    """(keypoint detector, TpsModel) with seeded random weights and BatchNorm statistics, in eval mode."""
    from fom_cli.animation_tpsmm import TpsModel
    from fom_cli.models.tpsmm import build_tpsmm_networks

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    networks = {name: randomize_(network, generator).eval()
                for name, network in build_tpsmm_networks(config["model_params"]).items()}
    return networks["kp_detector"], TpsModel(networks["inpainting_network"], networks["dense_motion_network"],
                                             networks["avd_network"])


def original_tensor(frames, device):
    """Frames as the original demo makes them: an NHWC copy, permuted (not made contiguous)."""
    return torch.tensor(np.asarray(frames, dtype=np.float32)).permute(0, 3, 1, 2).to(device)


def straightforward_tps_animation(kp_detector, model, source, driving, device):
    """The original demo.make_animation loop, relative mode: one frame at a time, the dense motion network
    and the inpainting network redoing the source's side (downsampling, heatmaps, encoder) every frame."""
    from fom_cli.models.tpsmm import relative_keypoints

    outputs = []
    with torch.no_grad():
        source = original_tensor(source[None], device)
        kp_source = kp_detector(source)
        kp_initial = kp_detector(original_tensor(driving[:1], device))
        for frame in driving:
            kp_driving = relative_keypoints(kp_source, kp_detector(original_tensor(frame[None], device)), kp_initial)
            motion = model.dense_motion_network(source, kp_driving, kp_source)
            outputs.append(model.inpainting_network(source, motion)["prediction"])
    return torch.cat(outputs).permute(0, 2, 3, 1).cpu().numpy()


def tps_gflop_per_frame(kp_detector, model, source, frame, device):
    """FLOPs of one driving frame on the straightforward path (2 per multiply-add)."""
    source_tensor, frame_tensor = original_tensor(source[None], device), original_tensor(frame[None], device)
    with torch.no_grad():
        kp_source = kp_detector(source_tensor)
        with FlopCounterMode(display=False) as counter:
            kp_driving = kp_detector(frame_tensor)
            model.inpainting_network(source_tensor, model.dense_motion_network(source_tensor, kp_driving, kp_source))
    return counter.get_total_flops() / 1e9


def bench_tpsmm_pipeline(args, config, device):
    """bench_pipeline for a TPSMM config: the original loop against TpsAnimator."""
    from fom_cli.animation_tpsmm import TpsAnimator, compile_tps_networks, optimize_tps_networks

    kp_detector, model = random_tps_networks(config, args.seed)
    kp_detector, model = kp_detector.to(device), model.to(device)
    report, batch_size, source, driving = bench_setup(args, config, device)
    report["family"] = "tpsmm"
    fast_kp, fast_model = copy.deepcopy(kp_detector), copy.deepcopy(model)
    prepack = device.type == "cpu" and args.precision == "fp32" and not args.compile   # as load_model does
    optimize_tps_networks(fast_kp, fast_model, prepack=prepack)
    if args.compile:
        compile_tps_networks(fast_kp, fast_model)
    animator = TpsAnimator(fast_kp, fast_model, source, precision=args.precision)
    pipeline_animation(animator, driving[:batch_size], batch_size)  # warm-up (and compilation)
    if args.compile:
        report["compiled"] = all(function.compiled is not None for function in (
            fast_kp.forward, fast_model.dense_motion_network.motion, fast_model.inpainting_network.decode))
    if not args.no_baseline:
        straightforward_tps_animation(kp_detector, model, source, driving[:1], device)  # warm-up

    onnx = onnx_animation(args, config, kp_detector, model, device, source, driving, batch_size, report)
    race(lambda: pipeline_animation(animator, driving, batch_size),
         lambda: straightforward_tps_animation(kp_detector, model, source, driving, device),
         args, device, report, onnx)
    # FLOPs are counted on the same rewrites without oneDNN prepacking, whose fused ops the counter cannot see.
    counted_kp, counted_model = copy.deepcopy(kp_detector), copy.deepcopy(model)
    optimize_tps_networks(counted_kp, counted_model)
    counted = TpsAnimator(counted_kp, counted_model, source, precision=args.precision)
    counted.set_initial_frame(driving[0])
    report["pipeline_gflop_per_frame"] = pipeline_gflop_per_frame(counted, driving[0])
    del counted, counted_kp, counted_model
    if not args.no_baseline:
        report["gflop_per_frame"] = tps_gflop_per_frame(kp_detector, model, source, driving[0], device)
    add_conv_share(report, device, args.precision)
    report["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return report


def bench_video(args, config, device):
    """The whole `fom animate` path on a real driving video, with random weights (FOMM or TPSMM, as the
    config says), optimised and compiled as load_model does."""
    prepack = device.type == "cpu" and args.precision == "fp32" and not args.compile   # as load_model does
    graphs = tempfile.TemporaryDirectory(prefix="fom-bench-onnx-")
    family = FAMILIES[config_family(config)]
    if args.backend == "onnxruntime":
        random = random_tps_networks if family.name == "tpsmm" else random_networks
        networks = onnx_networks(config, *random(config, args.seed), device, graphs.name)
        args.precision = "fp32"
    elif family.name == "tpsmm":
        from fom_cli.animation_tpsmm import compile_tps_networks, optimize_tps_networks

        kp_detector, generator = random_tps_networks(config, args.seed)
        kp_detector, generator = kp_detector.to(device), generator.to(device)
        optimize_tps_networks(kp_detector, generator, prepack=prepack)
        if args.compile:
            compile_tps_networks(kp_detector, generator)
    else:
        kp_detector, generator = random_networks(config, args.seed)
        kp_detector = optimize_for_inference(kp_detector.to(device), inplace=True, prepack=prepack)
        generator = optimize_for_inference(generator.to(device), inplace=True, prepack=prepack)
        if args.compile:
            compile_networks(kp_detector, generator)
    if args.backend != "onnxruntime":
        networks = Networks(config, kp_detector, generator, family)
    size = frame_size(config)
    source = synthetic_frames(1, size, args.seed)[0]
    if args.paste_back and not args.source:
        raise FomError("--paste-back needs --source PHOTO: a photo with a face to paste the animation back into")
    with tempfile.TemporaryDirectory() as folder:
        source_path = Path(args.source) if args.source else Path(folder) / "source.png"
        if not args.source:
            write_image(source_path, source)
        options = AnimationOptions(batch_size=args.batch_size, face=args.paste_back)
        output = Path(folder) / "out.mp4"
        start = time.perf_counter()
        animation = animate_file(networks, args.precision, source_path, Path(args.video), output, options,
                                 progress=not args.quiet)
        seconds = time.perf_counter() - start
        frames = probe(output).num_frames
        size = probe(output).size
    graphs.cleanup()
    report = {"config": config["_name"], "device": str(device), "video": args.video, "backend": args.backend,
              "frames": frames,
              "seconds": seconds, "fps": frames / seconds, "peak_rss_mib": peak_rss_mib()}
    if args.paste_back:
        # The face work per frame against the networks' per frame: following and cutting the driving face
        # (a background thread, overlapping the networks) and pasting back (on the main thread).
        spent = animation.timings
        report.update({"output_size": f"{size[1]}x{size[0]}",
                       "networks_ms_per_frame": 1000 * spent["networks"] / frames,
                       "driving_crop_ms_per_frame": 1000 * spent["driving_crop"] / frames,
                       "compositing_ms_per_frame": 1000 * spent["compositing"] / frames,
                       "face_work_share": (spent["driving_crop"] + spent["compositing"]) / spent["networks"]})
    return report


def run(args):
    device = pick_device(args.device)
    config = load_config(args.config)
    if args.backend == "onnxruntime":
        from fom_cli.onnx_backend import execution_providers

        execution_providers(device)   # a missing extra or provider stops here, in one line
        if args.compile:
            raise FomError("--compile is torch's: leave it out with --backend onnxruntime")
    args.precision, precision_reason = choose_precision(args.precision, device)
    if device.type == "cpu" and not args.quiet:
        note_cpu_speed(args.precision, args.compile)   # as `fom animate` says it
    report = bench_video(args, config, device) if args.video else bench_pipeline(args, config, device)
    report["precision"], report["precision_reason"] = args.precision, precision_reason
    if device.type == "cpu":
        cpu = cpu_precisions()
        report["cpu"] = {"name": cpu_name(), "native_bf16": cpu.bf16, "native_fp16": cpu.fp16, "why": cpu.why}
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0
