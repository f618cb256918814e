"""The bundled toon-128 model and the sample media: what a newcomer runs first."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

import fom_cli
from conftest import run_cli
from fom_cli.checkpoint import default_checkpoint
from fom_cli.families import load_networks
from fom_cli.checkpoint import read_checkpoint
from fom_cli.config import config_name
from fom_cli.media.video_in import probe
from fom_cli.samples import make_samples

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(fom_cli.__file__).resolve().parent / "samples"


def change_from_first_frame(frames):
    """Mean absolute change of every frame from the first: (T,) for uint8 (T, H, W, 3) frames."""
    frames = frames.astype(np.float32) / 255
    return np.abs(frames - frames[:1]).mean(axis=(1, 2, 3))


def test_the_bundled_checkpoint_is_small_and_loads_without_a_config():
    path = default_checkpoint()
    assert path.name == "toon-128.pth"
    assert path.stat().st_size < 25e6
    checkpoint = read_checkpoint(path)
    # Only what animation needs: no discriminator, no optimiser states.
    assert set(checkpoint) <= {"generator", "kp_detector", "config", "fom", "epoch"}
    networks = load_networks(path)
    config, kp_detector, generator, note = networks.config, networks.kp_detector, networks.generator, networks.note
    assert config_name(config) == "toon-128" and "config stored in toon-128.pth" in note
    assert config["dataset_params"]["frame_shape"][:2] == [128, 128]
    with torch.inference_mode():
        keypoints = kp_detector(torch.rand(1, 3, 128, 128))
    assert keypoints["value"].shape == (1, 10, 2) and keypoints["jacobian"].shape == (1, 10, 2, 2)


def test_animating_a_sample_follows_the_driving_motion(tmp_path, capsys):
    output = tmp_path / "out.mp4"
    code, _, err = run_cli(["animate", SAMPLES / "toon-1.png", SAMPLES / "drive-move.mp4", "-o", output], capsys)
    assert code == 0, err
    assert "bundled toon-128 model" in err
    frames, driving = iio.imread(output), iio.imread(SAMPLES / "drive-move.mp4")
    assert frames.shape == (100, 128, 128, 3)
    assert frames.std() > 0.1 * 255                                   # a face, not a blank frame
    moved, driven = change_from_first_frame(frames), change_from_first_frame(driving)
    assert moved.max() > 0.02                                          # not a frozen picture
    # The result changes when and as much as the driving face does: the head turns right, back, then left.
    assert np.corrcoef(moved, driven)[0, 1] > 0.8


def test_the_talking_sample_keeps_its_sound_and_a_wide_source_is_cropped(tmp_path, capsys):
    output = tmp_path / "talk.mp4"
    code, _, err = run_cli(["animate", SAMPLES / "toon-wide.png", SAMPLES / "drive-talk.mp4", "-o", output,
                            "--quiet"], capsys)
    assert code == 0, err
    info = probe(output)
    assert info.has_audio and info.num_frames == 100 and info.size == (128, 128)


def test_the_samples_are_what_make_samples_renders():
    assert np.array_equal(iio.imread(SAMPLES / "toon-1.png"), make_samples.source_image(0, 256))
    assert np.array_equal(iio.imread(SAMPLES / "toon-2.png"), make_samples.source_image(1, 256))
    assert iio.imread(SAMPLES / "toon-wide.png").shape == (240, 320, 3)
    talk, move = probe(SAMPLES / "drive-talk.mp4"), probe(SAMPLES / "drive-move.mp4")
    assert talk.has_audio and not move.has_audio
    assert talk.num_frames == move.num_frames == 100 and talk.fps == move.fps == 25


def test_the_quality_command_measures_the_bundled_model(capsys):
    code, out, err = run_cli(["evaluate-synth", "--pairs", 2, "--frames", 8, "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["checkpoint"].endswith("toon-128.pth")
    assert report["pairs"] == 2 and report["size"] == 128
    assert 0 < report["l1"] < 0.2 and 0 < report["copy_source_l1"] < 0.2
    # The model card's figure is 0.32 on 32 pairs of 32 frames; on these two short clips (little motion
    # yet) the shipped model gives 0.56 and 0.0061 at the first frame, the one before the blend 1.09
    # and 0.0129: a trained, sharp model, not merely a runnable one.
    assert report["ratio"] < 0.75 and report["first_frame_l1"] < 0.01


def test_reconstruction_defaults_to_the_bundled_model(tmp_path, capsys, monkeypatch):
    assert run_cli(["synth", "--out", tmp_path / "heldout", "--videos", 1, "--test-videos", 2, "--frames", 6,
                    "--size", 128, "--seed", 424242, "--quiet"]) == 0
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["reconstruct", "--data", "heldout", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "reconstruction" / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("toon-128.pth") and len(metrics["l1"]) == 2
    assert 0 < metrics["l1_mean"] < 0.2 and 0 < metrics["copy_source_l1_mean"] < 0.2


def test_without_the_bundled_model_the_error_says_where_to_get_one(tmp_path, capsys, monkeypatch):
    import fom_cli.checkpoint

    monkeypatch.setattr(fom_cli.checkpoint, "bundled_dir", lambda name: tmp_path / "empty")
    output = tmp_path / "out.mp4"
    code, _, err = run_cli(["animate", SAMPLES / "toon-1.png", SAMPLES / "drive-move.mp4", "-o", output, "--quiet"],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--checkpoint" in err and "vox-cpk.pth.tar" in err
    assert not output.exists()


def test_the_wheel_carries_model_and_samples_and_animates_in_a_fresh_venv(tmp_path):
    """A plain (non-editable) install: the checkpoint, configs and samples must be package data."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", tmp_path / "dist", REPO], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fom-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ["fom_cli/checkpoints/toon-128.pth", "fom_cli/configs/toon-128.yaml", "fom_cli/samples/toon-1.png",
                 "fom_cli/samples/drive-talk.mp4"]:
        assert name in names, name

    # A new venv gets the wheel; the heavy dependencies (torch, ...) come from this environment through a
    # .pth file rather than a second multi-gigabyte download. Paths in a .pth are not scanned for .pth
    # files themselves, so this environment's editable install of fom stays invisible there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    Path(site_packages, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel], check=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    package = subprocess.run([python, "-c", "import fom_cli, pathlib; print(pathlib.Path(fom_cli.__file__).parent)"],
                             cwd=work, env=environment, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(package).is_relative_to(venv)
    result = subprocess.run([venv / "bin" / "fom", "animate", Path(package, "samples", "toon-2.png"),
                             Path(package, "samples", "drive-talk.mp4"), "-o", "out.mp4", "--quiet"],
                            cwd=work, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info = probe(work / "out.mp4")
    assert info.num_frames == 100 and info.has_audio
