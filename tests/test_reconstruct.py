"""`fom reconstruct`: the original evaluation protocol on `fom synth` test videos, and its metrics."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import run_cli
from fom_cli.checkpoint import make_checkpoint, save_checkpoint
from fom_cli.config import bundled_dir, load_config
from fom_cli.media.marks import read_label
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
from fom_cli.training.data import FramesDataset



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two 8-frame test videos and a toy-64 checkpoint (random weights, batch norm statistics made up)."""
    root = tmp_path_factory.mktemp("reconstruct")
    assert run_cli(["synth", "--out", root / "faces", "--videos", 1, "--test-videos", 2, "--frames", 8,
                    "--size", 64, "--quiet"]) == 0
    config = load_config(bundled_dir("configs") / "toy-64.yaml")
    torch.manual_seed(0)
    networks = {"generator": build_generator(config["model_params"]),
                "discriminator": build_discriminator(config["model_params"]),
                "kp_detector": build_keypoint_detector(config["model_params"])}
    for module in networks.values():
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    checkpoint = root / "model.pth.tar"
    save_checkpoint(checkpoint, make_checkpoint(config, networks, epoch=0))
    return root / "faces", checkpoint, networks


def direct_l1(networks, video):
    """The original reconstruction.py, frame by frame: frame 0 is the source, absolute keypoints."""
    kp_detector, generator = networks["kp_detector"].eval(), networks["generator"].eval()
    frames = torch.tensor(video).permute(0, 3, 1, 2)
    errors, predictions = [], []
    with torch.no_grad():
        source = frames[:1]
        kp_source = kp_detector(source)
        for t in range(len(frames)):
            driving = frames[t:t + 1]
            prediction = generator(source, kp_source=kp_source, kp_driving=kp_detector(driving))["prediction"]
            errors.append(float((prediction - driving).abs().mean()))
            predictions.append(prediction[0].permute(1, 2, 0).numpy())
    return float(np.mean(errors)), np.stack(predictions)


def test_metrics_match_a_direct_computation(setup, tmp_path, monkeypatch, capsys):
    data, checkpoint, networks = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))   # no landmark weights: AKD skipped
    out = tmp_path / "out"
    code, stdout, err = run_cli(["reconstruct", "--checkpoint", checkpoint, "--data", data, "--out", out,
                                 "--device", "cpu", "--batch-size", 3], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    videos = FramesDataset(data, frame_shape=(64, 64, 3), is_train=False)
    assert sorted(metrics["l1"]) == videos.videos
    for item in videos:
        video = item["video"].transpose(1, 2, 3, 0)
        expected, predictions = direct_l1(networks, video)
        assert abs(metrics["l1"][item["name"]] - expected) < 1e-6
        baseline = np.abs(video.astype(np.float64) - video[:1]).mean()  # every frame predicted as frame 0
        assert abs(metrics["copy_source_l1"][item["name"]] - baseline) < 1e-9
        strip = iio.imread(out / "png" / f"{item['name']}.png")
        assert strip.shape == (64, 8 * 64, 3)
        assert np.abs(strip.astype(float) - np.concatenate(list(predictions), axis=1) * 255).max() <= 1.0
        assert (out / f"{item['name']}.mp4").stat().st_size > 0
        for output in (out / f"{item['name']}.mp4", out / "png" / f"{item['name']}.png"):   # marked as synthetic
            assert read_label(output)["source_image"] == item["name"]
    assert metrics["l1_mean"] == pytest.approx(np.mean(list(metrics["l1"].values())), abs=1e-12)
    assert metrics["akd"] is None and metrics["akd_note"].startswith("skipped")
    assert "L1" in stdout and "AKD skipped" in stdout


def test_default_output_folder_and_max_videos(setup, tmp_path, capsys):
    data, checkpoint, _ = setup
    copy = tmp_path / "model.pth.tar"
    copy.write_bytes(checkpoint.read_bytes())
    code, _, err = run_cli(["reconstruct", "--checkpoint", copy, "--data", data, "--max-videos", 1, "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "reconstruction" / "metrics.json").read_text())
    assert len(metrics["l1"]) == 1


def test_data_without_test_videos_is_a_one_line_error(setup, tmp_path, capsys):
    _, checkpoint, _ = setup
    (tmp_path / "data" / "train").mkdir(parents=True)
    code, _, err = run_cli(["reconstruct", "--checkpoint", checkpoint, "--data", tmp_path / "data", "--out",
                            tmp_path / "out"], capsys)
    assert code == 2 and "no test/ folder" in err and err.count("\n") == 1
