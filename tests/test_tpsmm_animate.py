"""Animating with TPSMM checkpoints: the TpsAnimator against the original code's predictions
(tests/fixtures/tpsmm-parity/small.npz), and `fom animate` end to end with the fixture's checkpoint."""

import gzip
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import PARITY, TPSMM_PARITY, assert_parity, make_clip, run_cli
from fom_cli.animation_tpsmm import TpsAnimator, TpsModel
from fom_cli.config import load_config
from fom_cli.errors import FomError
from fom_cli.media.video_in import probe
from fom_cli.models.tpsmm import build_tpsmm_networks
from test_tpsmm_parity import FRAME_LIMITS

SMALL_CONFIG = TPSMM_PARITY / "small.yaml"
# fom's mode names -> the original demo's (whose arrays small.npz holds).
ORIGINAL_MODE = {"relative": "relative", "absolute": "standard", "avd": "avd"}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(TPSMM_PARITY / "small.npz"))


@pytest.fixture(scope="module")
def networks():
    """The fixture checkpoint's networks, in eval mode, on one torch thread (see test_tpsmm_parity.py)."""
    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as file:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    networks = build_tpsmm_networks(load_config(SMALL_CONFIG)["model_params"])
    for name, network in networks.items():
        network.load_state_dict(checkpoint[name])
        network.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield networks
    torch.set_num_threads(threads)


def animator(networks, source, mode, avd=True):
    model = TpsModel(networks["inpainting_network"], networks["dense_motion_network"],
                     networks["avd_network"] if avd else None)
    return TpsAnimator(networks["kp_detector"], model, source, mode=mode)


def max_difference(ours, theirs):
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


def test_driving_keypoints_found_once_serve_every_source(networks, reference):
    driving = reference["driving"]
    shared = animator(networks, reference["source"], "relative").keypoints(driving)
    flipped = np.ascontiguousarray(reference["source"][:, ::-1])
    alone, given = animator(networks, flipped, "relative"), animator(networks, flipped, "relative")
    expected = alone.animate(driving)
    assert np.array_equal(given.animate(driving, shared), expected)
    assert not np.allclose(given.animate(driving, alone.keypoints(np.ascontiguousarray(driving[::-1]))), expected)


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_batches_of_driving_frames_reproduce_the_original_predictions(networks, reference, tpsmm_exact, mode):
    """Source side once, driving frames in batches of 3, 3 and 2: the original's frames (as
    test_tpsmm_parity checks them, against float64)."""
    tps = animator(networks, reference["source"], mode)
    tps.set_initial_frame(reference["driving"][0])
    frames = tps.animate_all(reference["driving"], batch_size=3)
    assert frames.dtype == np.float32
    name = ORIGINAL_MODE[mode]
    assert_parity(frames, reference[f"{name}_prediction"], tpsmm_exact[f"{name}_prediction"], FRAME_LIMITS[name], mode)
    # The keypoints side by side draws: the source's, each driving frame's and the moved ones of the last batch.
    assert tps.last_keypoints["source"].shape == (20, 2) and tps.last_keypoints["moved"].shape == (2, 20, 2)
    assert max_difference(tps.last_keypoints["driving"], reference["kp_driving"][6:]) <= 1e-6
    assert max_difference(tps.last_keypoints["moved"], reference[f"{ORIGINAL_MODE[mode]}_kp_norm"][6:]) <= 1e-6


def test_avd_mode_reproduces_the_original_predictions(networks, reference, tpsmm_exact):
    """One frame per batch, as the original: this random-weight model turns the 2e-7 by which keypoints
    computed in a batch differ into 3e-4 in its frames (see test_tpsmm_parity.py), so batched AVD is checked
    on its keypoints."""
    tps = animator(networks, reference["source"], "avd")
    frames = tps.animate_all(reference["driving"], batch_size=1)
    assert_parity(frames, reference["avd_prediction"], tpsmm_exact["avd_prediction"], FRAME_LIMITS["avd"], "avd")
    tps.animate(reference["driving"])
    assert max_difference(tps.last_keypoints["moved"], reference["avd_kp_norm"]) <= 1e-6


def test_relative_motion_is_measured_from_the_initial_frame_with_adapt_scale(networks, reference):
    tps = animator(networks, reference["source"], "relative")
    tps.set_initial_frame(reference["driving"][0])
    assert abs(tps.scale - float(reference["relative_movement_scale"])) <= 1e-6
    # Without adapt-scale the motion is not scaled; the initial frame itself gives the source's keypoints.
    plain = TpsAnimator(networks["kp_detector"], tps.generator, reference["source"], adapt_scale=False)
    plain.set_initial_frame(reference["driving"][5])
    assert plain.scale == 1.0
    plain.animate(reference["driving"][5:6])
    assert max_difference(plain.last_keypoints["moved"][0], reference["kp_source"]) <= 1e-6


def test_avd_mode_without_the_avd_network_is_one_clear_error(networks, reference):
    with pytest.raises(FomError, match="--mode avd needs the AVD network"):
        animator(networks, reference["source"], "avd", avd=False)


# --- fom animate with a TPSMM checkpoint ----------------------------------------------------------------------

@pytest.fixture
def inputs(tmp_path, reference):
    """The fixture's source as a PNG and its driving frames as a folder of PNGs (lossless: the arrays are
    uint8 / 255)."""
    source = tmp_path / "source.png"
    iio.imwrite(source, to_uint8(reference["source"]))
    driving = tmp_path / "driving"
    driving.mkdir()
    for i, frame in enumerate(reference["driving"]):
        iio.imwrite(driving / f"{i:05d}.png", to_uint8(frame))
    return source, driving


def to_uint8(frames):
    return np.round(np.asarray(frames) * 255).astype(np.uint8)


def read_png_frames(directory):
    return np.stack([iio.imread(path) for path in sorted(directory.glob("*.png"))]).astype(np.float32) / 255


@pytest.mark.parametrize("mode", ["relative", "absolute", "avd"])
def test_animate_writes_the_original_predictions(tmp_path, capsys, small_tpsmm_checkpoint, inputs, reference, mode):
    source, driving = inputs
    code, _, err = run_cli(["animate", source, driving, "-o", tmp_path / "out/", "--checkpoint", small_tpsmm_checkpoint,
                            "--config", SMALL_CONFIG, "--mode", mode, "--batch-size", "4", "--precision", "fp32",
                            "--quiet"], capsys)
    assert code == 0, err
    frames = read_png_frames(tmp_path / "out")
    # The original's frames, rounded to 8 bits (batched AVD adds up to 3e-4: see above).
    assert max_difference(frames, reference[f"{ORIGINAL_MODE[mode]}_prediction"]) <= 1 / 255 / 2 + 5e-4


def test_an_mp4_with_sound_keeps_its_frames_and_audio_and_side_by_side_draws_the_keypoints(
        tmp_path, capsys, small_tpsmm_checkpoint, inputs, reference):
    source, _ = inputs
    clip = make_clip(tmp_path / "drive.mp4", to_uint8(np.concatenate([reference["driving"]] * 3)), fps=12)
    model = ["--checkpoint", small_tpsmm_checkpoint, "--config", SMALL_CONFIG, "--quiet"]
    code, _, err = run_cli(["animate", source, clip, "-o", tmp_path / "out.mp4", *model], capsys)
    assert code == 0, err
    info = probe(tmp_path / "out.mp4")
    assert info.has_audio and info.num_frames == 24 and abs(info.fps - 12) < 1e-3 and info.size == (128, 128)

    code, _, err = run_cli(["animate", source, clip, "-o", tmp_path / "panels/", "--side-by-side", *model], capsys)
    assert code == 0, err
    panels = read_png_frames(tmp_path / "panels")
    assert panels.shape == (24, 128, 3 * 128, 3)
    # The source panel: the source with its first keypoint drawn in red where the original puts it.
    x, y = np.round((reference["kp_source"][0] + 1) / 2 * 127).astype(int)
    assert np.array_equal(panels[0, y, x], [1, 0, 0])
    untouched = np.all(np.abs(panels[0, :, :128] - reference["source"]) < 1e-6, axis=-1)
    assert 0.8 < untouched.mean() < 1


def test_avd_needs_a_tpsmm_checkpoint_with_its_avd_network(tmp_path, capsys, small_tpsmm_checkpoint, inputs):
    source, driving = inputs
    code, _, err = run_cli(["animate", source, driving, "-o", tmp_path / "out.mp4", "--checkpoint",
                            PARITY / "small.pth.tar", "--config",
                            PARITY / "small.yaml", "--mode", "avd"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Thin-Plate Spline" in err
    checkpoint = torch.load(small_tpsmm_checkpoint, weights_only=True)
    del checkpoint["avd_network"]
    torch.save(checkpoint, tmp_path / "no-avd.pth.tar")
    code, _, err = run_cli(["animate", source, driving, "-o", tmp_path / "out.mp4", "--checkpoint",
                            tmp_path / "no-avd.pth.tar", "--config", SMALL_CONFIG, "--mode", "avd"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no avd_network" in err
    assert not (tmp_path / "out.mp4").exists()
    # Relative motion does not need it.
    code, _, err = run_cli(["animate", source, driving, "-o", tmp_path / "out.mp4", "--checkpoint",
                            tmp_path / "no-avd.pth.tar", "--config", SMALL_CONFIG, "--quiet"], capsys)
    assert code == 0, err
    assert probe(tmp_path / "out.mp4").num_frames == 8


def test_bench_compares_the_original_loop_with_the_tps_animator(capsys, one_torch_thread):
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--size", "64", "--frames", "2",
                              "--repeats", "1", "--precision", "fp32", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["family"] == "tpsmm" and report["size"] == [64, 64] and report["frames"] == 2
    assert report["max_abs_difference"] <= 1e-4
    assert report["pipeline_fps"] > 0 and report["straightforward_fps"] > 0 and report["speedup"] > 0
    # The source's side (its encoding, downsampling and heatmaps) is gone from the per-frame cost.
    assert report["pipeline_gflop_per_frame"] < report["gflop_per_frame"]


def test_bench_times_the_whole_animate_path_of_a_tpsmm_config_on_a_video(tmp_path, capsys, reference):
    """`fom bench animate --video` with a TPSMM config (it stopped with KeyError 'kp_detector_params')."""
    video = make_clip(tmp_path / "drive.mp4", to_uint8(reference["driving"][:4]), fps=25, tone=False)
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--video", video, "--json", "--quiet"],
                             capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["frames"] == 4 and report["fps"] > 0


# --- fom reconstruct with a TPSMM checkpoint --------------------------------------------------------------------

def original_reconstruction_l1(kp_detector, model, video):
    """The TPSMM original's reconstruction.py, frame by frame: frame 0 is the source, each frame's own
    keypoints, the background predictor's motion between the source and the frame."""
    frames = torch.tensor(video).permute(0, 3, 1, 2)
    errors = []
    with torch.no_grad():
        source = frames[:1]
        kp_source = kp_detector(source)
        for t in range(len(frames)):
            driving = frames[t:t + 1]
            bg_param = None if model.bg_predictor is None else model.bg_predictor(source, driving)
            motion = model.dense_motion_network(source, kp_detector(driving), kp_source, bg_param=bg_param)
            errors.append(float((model.inpainting_network(source, motion)["prediction"] - driving).abs().mean()))
    return float(np.mean(errors))


def test_reconstruct_uses_the_background_predictor_as_the_original_does(tmp_path, capsys, networks):
    from fom_cli.checkpoint import make_checkpoint, save_checkpoint
    from fom_cli.models.tpsmm import BgMotionPredictor
    from fom_cli.training.data import FramesDataset

    assert run_cli(["synth", "--out", tmp_path / "faces", "--videos", 1, "--test-videos", 1, "--frames", 6,
                    "--size", 64, "--quiet"]) == 0
    config = load_config(SMALL_CONFIG)
    config["model_params"]["common_params"]["bg"] = True
    torch.manual_seed(0)
    bg_predictor = BgMotionPredictor()
    with torch.no_grad():   # a background motion that is not the identity: small random affine maps
        bg_predictor.bg_encoder.fc.weight.normal_(0, 1e-3)
    checkpoint = make_checkpoint(config, {**networks, "bg_predictor": bg_predictor}, epoch=0)
    save_checkpoint(tmp_path / "tps.pth.tar", checkpoint)

    code, _, err = run_cli(["reconstruct", "--checkpoint", tmp_path / "tps.pth.tar", "--data", tmp_path / "faces",
                            "--out", tmp_path / "out", "--device", "cpu", "--batch-size", 3, "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["background_motion"] is True
    # Read at the model's frame size, 128 px, as fom reconstruct reads them.
    [item] = FramesDataset(tmp_path / "faces", frame_shape=(128, 128, 3), is_train=False)
    video = item["video"].transpose(1, 2, 3, 0)
    model = TpsModel(networks["inpainting_network"], networks["dense_motion_network"], networks["avd_network"],
                     bg_predictor.eval())
    expected = original_reconstruction_l1(networks["kp_detector"], model, video)
    assert abs(metrics["l1"][item["name"]] - expected) < 1e-6
    # Without the background motion the frames differ: the predictor was used.
    model.bg_predictor = None
    assert abs(original_reconstruction_l1(networks["kp_detector"], model, video) - expected) > 1e-5


# --- speed rewrites and memory ------------------------------------------------------------------------------

@pytest.mark.parametrize("prepack", [False, True])
def test_inference_rewrites_compute_the_same_frames(networks, reference, prepack, monkeypatch):
    """Sub-pixel up blocks, strided anti-aliasing, row-split and prepacked convolutions, Winograd residual
    blocks, channels_last: the dense motion and inpainting networks' outputs agree to float rounding, and
    instance normalisation stays."""
    from fom_cli.models.blocks import UpBlock2d
    from fom_cli.models.tpsmm import inference
    from fom_cli.models.tpsmm.inference import WinogradConv, optimize_tps_for_inference

    # Winograd from this small model's 64 channels (vox-256: its 512-channel blocks).
    monkeypatch.setattr(inference, "WINOGRAD_MIN_CHANNELS", 64)

    source = torch.tensor(reference["source"][None]).permute(0, 3, 1, 2)
    kp_source = torch.tensor(reference["kp_source"])[None]
    kp_moved = torch.tensor(reference["relative_kp_norm"][2:5])
    results = []
    for optimize in (False, True):
        dense_motion, inpainting = networks["dense_motion_network"], networks["inpainting_network"]
        if optimize:
            dense_motion = optimize_tps_for_inference(dense_motion, prepack=prepack)
            inpainting = optimize_tps_for_inference(inpainting, prepack=prepack)
            for network in (dense_motion, inpainting):
                assert not any(isinstance(module, UpBlock2d) for module in network.modules())
                assert any(isinstance(module, torch.nn.InstanceNorm2d) for module in network.modules())
            assert sum(isinstance(module, WinogradConv) for module in inpainting.modules()) == 12
        with torch.inference_mode():
            motion = dense_motion.motion(dense_motion.prepare_source(source, kp_source), kp_moved)
            results.append((motion, inpainting.decode(inpainting.encode_source(source), motion)["prediction"]))
    (plain_motion, plain_frames), (fast_motion, fast_frames) = results
    assert max_difference(fast_motion["deformation"].numpy(), plain_motion["deformation"].numpy()) <= 1e-5
    for fast, plain in zip(fast_motion["occlusion_maps"], plain_motion["occlusion_maps"]):
        assert max_difference(fast.numpy(), plain.numpy()) <= 1e-5
    # Frames through the warp: flow rounding times the image's gradient (see test_tpsmm_parity.WARPED_LIMIT).
    assert max_difference(fast_frames.numpy(), plain_frames.numpy()) <= 1e-4


@pytest.mark.parametrize("size", [(32, 32), (30, 21)])
def test_winograd_convolution_error_is_within_its_float32_bound(size):
    """WinogradConv against a float64 convolution, on a scale no CPU's kernels change: float32 rounding
    (2^-24) times the largest sum |w| |x| a convolution output adds up (about 15 here). A direct float32
    convolution measures 0.6 to 4.9 on that scale (oneDNN's AVX-512 kernels here, its AVX2 and SSE4.1
    ones); the Winograd blocks 5.8 to 6.9 with the points 0, -1, 1, 1/2, -2 (the usual 0, +-1, +-2: 16
    to 20, which this bound catches). 12 leaves a margin for other CPUs' matrix products."""
    from fom_cli.models.tpsmm.inference import WinogradConv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(512, 512, 3, padding=1)
    x = torch.relu(torch.randn(2, 512, *size))   # activations after a normalisation and a ReLU
    with torch.no_grad():
        weight, bias = conv.weight.double(), conv.bias.double()
        exact = torch.nn.functional.conv2d(x.double(), weight, bias, padding=1)
        scale = float(torch.nn.functional.conv2d(x.double().abs(), weight.abs(), bias.abs(), padding=1).max())
        winograd = WinogradConv(conv)(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):   # float32 also under autocast
            autocast = WinogradConv(conv)(x)
    assert winograd.shape == exact.shape and winograd.dtype == torch.float32
    error = float((winograd.double() - exact).abs().max())
    assert error <= 12 * 2.0 ** -24 * scale, f"{error:.3g} is {error / (2.0 ** -24 * scale):.1f} units of {scale:.3g}"
    assert torch.equal(autocast, winograd)


def test_memory_does_not_grow_with_an_18_second_driving_video(tmp_path, networks, reference):
    """18 s of driving video (450 frames at 25 fps) in the memory 2 s take: it streams through the TpsAnimator."""
    from fom_cli.checkpoint import make_checkpoint, save_checkpoint
    from test_speed import peak_rss_during

    config = load_config(SMALL_CONFIG)
    config["dataset_params"]["frame_shape"] = [64, 64, 3]   # a quarter of the pixels: the test stays quick
    save_checkpoint(tmp_path / "tps-64.pth", make_checkpoint(config, networks))
    frames = to_uint8(reference["driving"][:, ::2, ::2])
    short = make_clip(tmp_path / "short.mp4", np.concatenate([frames] * 8)[:50], fps=25, tone=False)
    long = make_clip(tmp_path / "long.mp4", np.concatenate([frames] * 57)[:450], fps=25, tone=False)
    source = tmp_path / "source.png"
    iio.imwrite(source, to_uint8(reference["source"][::2, ::2]))

    def animate(driving, output):
        assert run_cli(["animate", source, driving, "-o", output, "--checkpoint", tmp_path / "tps-64.pth",
                        "--quiet"]) == 0

    animate(short, tmp_path / "warm-up.mp4")  # allocator and thread pools settle
    peak_short = peak_rss_during(lambda: animate(short, tmp_path / "short-out.mp4"))
    peak_long = peak_rss_during(lambda: animate(long, tmp_path / "long-out.mp4"))
    assert probe(tmp_path / "long-out.mp4").num_frames == 450
    # Holding the 400 extra predictions would take 400 x 48 KiB = 19 MiB, and as much for the driving frames.
    assert peak_long - peak_short < 12, (peak_short, peak_long)
