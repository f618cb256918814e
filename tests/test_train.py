"""`fom train`: learning on synthetic faces, exact resume, fine-tuning, two-process DDP, safe checkpoints.

Everything runs on the CPU on `fom synth` data (64x64 cartoon faces) with the toy-64 config and without
VGG19 weights (--no-perceptual), so the whole file takes about a minute.
"""

import argparse
import copy
import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

from conftest import SMALL_CHECKPOINT, SMALL_CONFIG, run_cli
from fom_cli.families import load_networks
from fom_cli.checkpoint import read_checkpoint
from fom_cli.config import bundled_dir, load_config
from fom_cli.evaluation.reconstruction import l1_distance, reconstruct_video
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
from fom_cli.commands import train as train_command
from fom_cli.errors import FomError
from fom_cli.training.distributed import CpuSyncBatchNorm, synchronise_batch_norm
from fom_cli.training.loop import train
from fom_cli.training.run_log import RunLog
from fom_cli.training.data import FramesDataset

TOY_CONFIG = bundled_dir("configs") / "toy-64.yaml"
REPO = Path(__file__).resolve().parent.parent



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """16 training and 2 held-out videos of 16 frames, 64x64."""
    out = tmp_path_factory.mktemp("synth") / "faces"
    assert run_cli(["synth", "--out", out, "--videos", 16, "--test-videos", 2, "--frames", 16, "--size", 64,
                    "--quiet"]) == 0
    return out


def train_args(*argv):
    """TrainOptions as `fom train ARGV` makes them."""
    parser = argparse.ArgumentParser()
    train_command.configure_parser(parser)
    return train_command.train_options(parser.parse_args([str(arg) for arg in argv]))


def gan_config(tmp_path, **train_params):
    """toy-64 with the generator GAN loss on (so the discriminator trains too) and a checkpoint every epoch."""
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["train_params"]["loss_weights"]["generator_gan"] = 1
    config["train_params"].update(checkpoint_freq=1, **train_params)
    path = tmp_path / "toy-gan.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def held_out_l1(kp_detector, generator, data):
    """Mean reconstruction L1 over the test videos (fom reconstruct's protocol)."""
    dataset = FramesDataset(data, frame_shape=(64, 64, 3), is_train=False)
    errors = []
    for item in dataset:
        video = item["video"].transpose(1, 2, 3, 0)
        errors.append(l1_distance(reconstruct_video(kp_detector, generator, video), video))
    return float(np.mean(errors))


def test_training_on_synth_faces_lowers_the_reconstruction_error(synth_data, tmp_path, capsys):
    config = load_config(TOY_CONFIG)
    torch.manual_seed(0)   # the untrained networks fom train starts from (same seed, same build order)
    generator, _, kp_detector = (build_generator(config["model_params"]), build_discriminator(config["model_params"]),
                                 build_keypoint_detector(config["model_params"]))
    untrained = held_out_l1(kp_detector.eval(), generator.eval(), synth_data)

    out = tmp_path / "run"
    summary = train(train_args("--config", TOY_CONFIG, "--data", synth_data, "--out", out, "--epochs", 3,
                                       "--num-repeats", 10, "--workers", 0, "--no-perceptual", "--quiet"))
    assert summary["iterations"] == 3 * 20   # 16 videos x 10 repeats / batch 8, three epochs
    assert len(summary["epoch_losses"]) == 3   # running means: nothing kept per iteration
    networks = load_networks(out / "checkpoint.pth.tar")
    kp_detector, generator = networks.kp_detector, networks.generator   # the checkpoint's own config
    trained = held_out_l1(kp_detector, generator, synth_data)
    with capsys.disabled():   # shown with pytest -s
        print(f"\nheld-out L1: untrained {untrained:.4f}, trained {trained:.4f} ({1 - trained / untrained:.0%} lower); "
              f"{summary['seconds_per_iteration']:.2f} s per iteration")
    assert trained <= 0.7 * untrained

    lines = (out / "log.txt").read_text().splitlines()
    assert "pixel L1" in lines[0] and lines[0].startswith("# ")   # the log says what replaced VGG19
    assert [line.split(")")[0] for line in lines[1:]] == ["00000000", "00000001", "00000002"]
    assert "pixel_l1 - " in lines[1] and "equivariance_jacobian - " in lines[1]
    assert sorted(p.name for p in (out / "train-vis").iterdir()) == [f"0000000{i}-rec.png" for i in range(3)]
    assert load_config(out / "config.yaml")["dataset_params"]["root_dir"] == str(synth_data)

    # The checkpoint animates without --config, and keeps the original's keys.
    checkpoint = read_checkpoint(out / "checkpoint.pth.tar")
    assert list(checkpoint)[:7] == ["generator", "discriminator", "kp_detector", "optimizer_generator",
                                    "optimizer_discriminator", "optimizer_kp_detector", "epoch"]
    assert checkpoint["epoch"] == 2
    test_video = sorted((synth_data / "test").iterdir())[0]
    source = sorted(test_video.iterdir())[0]
    capsys.readouterr()
    code, _, err = run_cli(["animate", source, test_video, "-o", tmp_path / "animated.mp4", "--checkpoint",
                            out / "checkpoint.pth.tar", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "animated.mp4").stat().st_size > 0


def test_resume_continues_exactly_like_an_uninterrupted_run(synth_data, tmp_path):
    config = gan_config(tmp_path)
    common = ("--config", config, "--data", synth_data, "--num-repeats", 1, "--batch-size", 4, "--workers", 0,
              "--no-perceptual", "--quiet")
    straight = train(train_args(*common, "--epochs", 2, "--out", tmp_path / "straight"))
    first = train(train_args(*common, "--epochs", 1, "--out", tmp_path / "split"))
    # --resume alone finds the config in the checkpoint and the run folder next to it.
    second = train(train_args("--resume", tmp_path / "split" / "checkpoint.pth.tar", "--epochs", 2,
                                      "--workers", 0, "--no-perceptual", "--quiet"))
    assert straight["iterations"] == 8 and "disc_gan" in straight["epoch_losses"][0]
    # Exactly: each epoch's mean is the sum of every iteration's losses, in order.
    assert first["epoch_losses"] + second["epoch_losses"] == straight["epoch_losses"]
    assert second["out_dir"] == tmp_path / "split"
    for name, module in straight["networks"].items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, second["networks"][name].state_dict()[key]), f"{name}.{key}"
    log = (tmp_path / "split" / "log.txt").read_text()
    assert "00000000)" in log and "00000001)" in log

    with pytest.raises(FomError, match="already trained 2 of 2 epochs"):
        train(train_args("--resume", tmp_path / "split" / "checkpoint.pth.tar", "--workers", 0,
                                 "--no-perceptual", "--quiet"))


def test_resume_keeps_the_runs_own_options_unless_overridden(synth_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG19: a perceptual loss stops the run
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["train_params"]["checkpoint_freq"] = 1
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    common = ["--num-repeats", 1, "--batch-size", 4, "--workers", 0, "--quiet"]
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", tmp_path / "toy.yaml", "--data", synth_data, *common, "--epochs", 1,
                            "--no-perceptual", "--keep-checkpoints", "--seed", 3, "--out", run], capsys)
    assert code == 0, err
    latest = run / "checkpoint.pth.tar"
    # Given again, an option wins: --perceptual needs VGG19's weights, which are not there.
    code, _, err = run_cli(["train", "--resume", latest, *common, "--epochs", 2, "--perceptual"], capsys)
    assert code == 2 and "the perceptual loss needs VGG19" in err
    # Left out, the run's own apply: no VGG19, every checkpoint kept, the same seed.
    code, _, err = run_cli(["train", "--resume", latest, *common, "--epochs", 2], capsys)
    assert code == 0, err
    assert sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-00001.pth.tar",
                                                                      "checkpoint-00002.pth.tar"]
    assert read_checkpoint(latest)["run_options"] == {"no_perceptual": True, "keep_checkpoints": True, "seed": 3}
    assert "--resume keeps the run's options: --no-perceptual --keep-checkpoints --seed 3" in (run / "log.txt").read_text()


def test_kept_checkpoints_export_as_their_average(synth_data, tmp_path, capsys):
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["train_params"]["checkpoint_freq"] = 1
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    summary = train(train_args("--config", tmp_path / "toy.yaml", "--data", synth_data, "--num-repeats", 1,
                                       "--batch-size", 4, "--workers", 0, "--no-perceptual", "--quiet", "--epochs", 2,
                                       "--keep-checkpoints", "--out", tmp_path / "run"))
    run = summary["out_dir"]
    kept = [run / "checkpoint-00001.pth.tar", run / "checkpoint-00002.pth.tar"]
    first, second = (read_checkpoint(path) for path in kept)
    assert first["epoch"] == 0 and second["epoch"] == 1
    latest = read_checkpoint(run / "checkpoint.pth.tar")
    assert all(torch.equal(latest["generator"][key], second["generator"][key]) for key in latest["generator"])

    code, _, err = run_cli(["export", *kept, "-o", tmp_path / "average.pth"], capsys)
    assert code == 0 and "the average of 2 checkpoints" in err, err
    average = read_checkpoint(tmp_path / "average.pth")
    for network in ("generator", "kp_detector"):
        for key, value in average[network].items():
            a, b = first[network][key], second[network][key]
            if value.is_floating_point():
                assert torch.allclose(value, (a + b) / 2, atol=1e-7), f"{network}.{key}"
            else:   # BatchNorm's batch counter: the last checkpoint's
                assert torch.equal(value, b), f"{network}.{key}"
    moved = [key for key in average["generator"] if not torch.equal(first["generator"][key], second["generator"][key])]
    assert moved   # the two epochs differ, so the average is a third set of weights
    networks = load_networks(tmp_path / "average.pth")
    config, note = networks.config, networks.note
    assert "config stored in average.pth" in note and config["model_params"] == latest["config"]["model_params"]

    # Checkpoints of different configs do not average: one error line, nothing written.
    code, _, err = run_cli(["export", kept[0], SMALL_CHECKPOINT, "-o", tmp_path / "mixed.pth"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not fit the config" in err
    assert not (tmp_path / "mixed.pth").exists()


def test_init_and_resume_from_an_original_checkpoint(synth_data, tmp_path):
    """The original's small.pth.tar (written by its Logger.save_cpk, epoch 3) fine-tunes and resumes."""
    common = ("--config", SMALL_CONFIG, "--data", synth_data, "--num-repeats", 1, "--batch-size", 8, "--workers", 0,
              "--quiet")
    original = read_checkpoint(SMALL_CHECKPOINT)

    # --init: weights only, epochs from 0. The original's state: learning rates of 0 leave weights as loaded.
    frozen = tmp_path / "frozen.yaml"
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["train_params"].update(lr_generator=0, lr_discriminator=0, lr_kp_detector=0)
    frozen.write_text(yaml.safe_dump(config))
    summary = train(train_args("--config", frozen, *common[2:], "--init", SMALL_CHECKPOINT, "--epochs", 1,
                                       "--out", tmp_path / "init"))
    assert summary["epochs"] == (0, 1) and summary["iterations"] == 2
    for name in ("generator", "kp_detector", "discriminator"):
        weights = dict(summary["networks"][name].named_parameters())
        for key, value in weights.items():
            assert torch.equal(value.detach(), original[name][key]), f"{name}.{key}"
    assert "optimizer_kp_detector" not in read_checkpoint(tmp_path / "init" / "checkpoint.pth.tar")

    # --resume: the original's optimiser states, and epoch 3 done, so training continues at epoch 4.
    summary = train(train_args(*common, "--resume", SMALL_CHECKPOINT, "--epochs", 5, "--out",
                                       tmp_path / "resumed"))
    assert summary["epochs"] == (4, 5) and summary["iterations"] == 2
    assert read_checkpoint(tmp_path / "resumed" / "checkpoint.pth.tar")["epoch"] == 4


def test_init_adds_a_blend_mask_to_a_generator_that_had_none(synth_data, tmp_path):
    """Fine-tuning an original checkpoint into a config with blend_warped_source (as toon-128 was): every
    weight it has is loaded, the new mask starts at one half and learns."""
    original = read_checkpoint(SMALL_CHECKPOINT)
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["model_params"]["generator_params"]["blend_warped_source"] = True
    config["train_params"].update(lr_generator=1e-3, lr_discriminator=0, lr_kp_detector=0)
    path = tmp_path / "small-blend.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = train(train_args("--config", path, "--data", synth_data, "--num-repeats", 1, "--batch-size", 8,
                                       "--workers", 0, "--quiet", "--init", SMALL_CHECKPOINT, "--epochs", 1,
                                       "--out", tmp_path / "blend"))
    log = (tmp_path / "blend" / "log.txt").read_text()
    assert "small.pth.tar has no blend mask (blend_warped_source): it starts from its initial weights" in log
    for key, value in summary["networks"]["kp_detector"].named_parameters():
        assert torch.equal(value.detach(), original["kp_detector"][key]), key
    mask = summary["networks"]["generator"].blend_mask
    assert float(mask.weight.detach().abs().max()) > 0   # from zero: the mask's gradient reached it
    networks = load_networks(tmp_path / "blend" / "checkpoint.pth.tar")
    loaded_config, kp_detector, generator = networks.config, networks.kp_detector, networks.generator
    assert loaded_config["model_params"]["generator_params"]["blend_warped_source"]
    frames = np.stack([iio.imread(frame) for frame in sorted((synth_data / "test").glob("*/*.png"))[:4]]) / 255
    reconstruction = reconstruct_video(kp_detector, generator, frames.astype(np.float32))
    assert reconstruction.shape == frames.shape and np.isfinite(reconstruction).all()


def _ddp_worker(rank, port, argv, results):
    """One of two training processes, as torchrun would start it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo")
        batch_norm = sync_batch_norm_differences(rank)
        summary = train(train_args(*argv[rank]))
        # As numpy arrays: tensors would travel as shared memory that vanishes when this process ends.
        weights = {f"{name}.{key}": value.detach().numpy().copy() for name, module in summary["networks"].items()
                   for key, value in module.state_dict().items()}
        results.put((rank, weights, (summary["iterations"], summary["epoch_losses"]), batch_norm))
    except BaseException as error:   # report instead of hanging the test
        results.put((rank, repr(error), None, None))
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def sync_batch_norm_differences(rank):
    """How far batch norm synchronised over two processes, each with half a batch, is from plain batch norm
    on the whole batch: outputs, input and weight gradients, running statistics."""
    generator = torch.Generator().manual_seed(0)
    batch, upstream = torch.randn(4, 3, 5, 5, generator=generator), torch.randn(4, 3, 5, 5, generator=generator)
    reference = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.normal_(generator=generator)
    synced = synchronise_batch_norm(torch.nn.Sequential(copy.deepcopy(reference)), torch.device("cpu"))[0]
    assert type(synced) is CpuSyncBatchNorm

    whole = batch.clone().requires_grad_(True)
    expected = reference(whole)
    (expected * upstream).sum().backward()
    half = slice(2 * rank, 2 * rank + 2)
    part = batch[half].clone().requires_grad_(True)
    out = synced(part)
    (out * upstream[half]).sum().backward()
    weight_gradient = synced.weight.grad.clone()
    torch.distributed.all_reduce(weight_gradient)   # what DDP sums up
    pairs = [(out, expected[half]), (part.grad, whole.grad[half]), (weight_gradient, reference.weight.grad),
             (synced.running_mean, reference.running_mean), (synced.running_var, reference.running_var)]
    return max(float((a.detach() - b.detach()).abs().max()) for a, b in pairs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_in_step_and_only_the_first_writes(synth_data, tmp_path):
    config = gan_config(tmp_path)
    common = ["--config", config, "--data", synth_data, "--epochs", 1, "--num-repeats", 1, "--batch-size", 8,
              "--workers", 0, "--no-perceptual", "--quiet", "--device", "cpu"]
    # Both processes get the same arguments, as under torchrun, except --out: rank 1 must not write into its own.
    argv = [common + ["--out", tmp_path / "rank0"], common + ["--out", tmp_path / "rank1"]]
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_ddp_worker, args=(rank, port, argv, results)) for rank in range(2)]
    for process in processes:
        process.start()
    outcomes = {}
    for _ in processes:
        rank, weights, losses, batch_norm = results.get(timeout=300)
        outcomes[rank] = (weights, losses, batch_norm)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank in (0, 1):
        assert isinstance(outcomes[rank][0], dict), outcomes[rank][0]
        assert outcomes[rank][2] < 1e-5   # synchronised batch norm == batch norm over the whole batch

    # 16 videos, 8 per step, 4 in each process: two iterations, the same weights everywhere afterwards.
    assert outcomes[0][1][0] == outcomes[1][1][0] == 2
    assert outcomes[0][1][1] != outcomes[1][1][1]   # each process saw its own samples
    weights0, weights1 = outcomes[0][0], outcomes[1][0]
    assert weights0.keys() == weights1.keys()
    for key in weights0:
        assert np.array_equal(weights0[key], weights1[key]), key
    assert any("running_mean" in key for key in weights0)   # batch-norm statistics are synchronised too
    assert (tmp_path / "rank0" / "checkpoint.pth.tar").is_file()
    assert not (tmp_path / "rank1").exists()


KILL_WHILE_SAVING = """
import os, sys, time
import torch
import fom_cli.checkpoint
real_save, saves = torch.save, []
def slow_save(obj, file, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:   # the second checkpoint: write half of it, then wait to be killed
        file.write(b"x" * 1000)
        file.flush()
        print("SAVING", flush=True)
        time.sleep(60)
    return real_save(obj, file, *args, **kwargs)
fom_cli.checkpoint.torch.save = slow_save
from fom_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_saving_leaves_the_previous_checkpoint(synth_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", gan_config(tmp_path), "--data", synth_data, "--out", out, "--epochs", 2,
            "--num-repeats", 1, "--batch-size", 8, "--workers", 0, "--no-perceptual", "--quiet"]
    process = subprocess.Popen([sys.executable, "-c", KILL_WHILE_SAVING, *map(str, args)], cwd=REPO,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "SAVING", process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    checkpoint = read_checkpoint(out / "checkpoint.pth.tar")
    assert checkpoint["epoch"] == 0   # the first epoch's, intact
    load_networks(out / "checkpoint.pth.tar")


def test_missing_vgg_weights_stop_before_training(synth_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code, _, err = run_cli(["train", "--config", TOY_CONFIG, "--data", synth_data, "--out", tmp_path / "run",
                            "--workers", 0, "--quiet"], capsys)
    assert code == 2
    assert err.startswith("fom: error: the perceptual loss needs VGG19") and err.count("\n") == 1
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in err
    assert not (tmp_path / "run").exists()


def test_a_full_disk_mid_run_is_one_line_and_the_previous_checkpoint_stays(synth_data, tmp_path):
    import resource

    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["train_params"]["checkpoint_freq"] = 1
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    common = ["--num-repeats", 1, "--batch-size", 4, "--workers", 0, "--quiet"]
    run = tmp_path / "run"
    assert run_cli(["train", "--config", tmp_path / "toy.yaml", "--data", synth_data, *common, "--epochs", 1,
                    "--no-perceptual", "--out", run]) == 0
    latest = run / "checkpoint.pth.tar"
    before = latest.read_bytes()
    limit = len(before) // 2  # the next checkpoint cannot be written whole: what a full disk does

    def limit_file_size():  # SIGXFSZ ignored, so a write past the limit fails with EFBIG instead of killing
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    argv = ["train", "--resume", latest, *common, "--epochs", 2]
    result = subprocess.run([sys.executable, "-m", "fom_cli", *map(str, argv)], capture_output=True, text=True,
                            preexec_fn=limit_file_size, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("fom: error:") and "File too large" in lines[0]
    assert latest.read_bytes() == before   # the previous checkpoint, intact
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("argv, message", [
    ([], "fom train needs --config"),
    (["--config", TOY_CONFIG, "--data", "/nonexistent/data"], "does not exist"),
    (["--config", TOY_CONFIG, "--epochs", 0], "argument --epochs: invalid positive integer value: '0'"),
    (["--config", SMALL_CONFIG, "--batch-size", 4], "no training data: pass --data"),
    (["--config", SMALL_CONFIG, "--data", "x"], "no train_params.batch_size (pass --batch-size)"),
    (["--config", TOY_CONFIG, "--resume", "/nonexistent.pth.tar"], "does not exist"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    code, _, err = run_cli(["train", *argv, "--no-perceptual", "--quiet", "--workers", 0], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_tensorboard_scalars_when_the_package_is_there(tmp_path, monkeypatch):
    """tensorboard is optional; with it, every iteration's losses and each epoch's means and rates go there."""
    scalars = []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = RunLog(tmp_path / "run", load_config(TOY_CONFIG), quiet=True)
    images = torch.rand(2, 3, 64, 64)
    keypoints = {"value": torch.rand(2, 10, 2) * 2 - 1}
    generated = {"kp_source": keypoints, "kp_driving": keypoints, "deformed": images, "prediction": images,
                 "occlusion_map": torch.rand(2, 1, 32, 32)}
    log.iteration(7, {"pixel_l1": 1.5})
    log.epoch(0, {"pixel_l1": 1.25}, {"generator": 2e-4}, {"source": images, "driving": images}, generated)
    log.close()
    assert scalars == [("loss/pixel_l1", 1.5, 7), ("epoch/pixel_l1", 1.25, 0), ("lr/generator", 2e-4, 0)]
    picture = iio.imread(tmp_path / "run" / "train-vis" / "00000000-rec.png")
    assert picture.shape == (2 * 64, 5 * 64, 3)   # source, driving, deformed, occlusion, prediction
