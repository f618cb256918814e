"""Train a First Order Motion Model on videos.

  fom train --config configs/toy-64.yaml --data data/faces --no-perceptual
  fom train --config vox-256 --data data/vox-png --out runs/vox
  fom train --resume runs/vox/checkpoint.pth.tar             continue exactly where the checkpoint was
  fom train --config vox-adv-256 --init vox-cpk.pth.tar ...  fine-tune from any checkpoint's weights
  torchrun --nproc_per_node=4 -m fom_cli train --config vox-256 --data data/vox-png

The loop is the original's (train.py). For every batch of (source, driving) frame pairs: one Adam step
of the keypoint detector and the generator on their losses (training/losses.py); then, when the config
has a generator GAN loss, one step of the discriminator. Adam's betas are (0.5, 0.999) and every
learning rate drops 10x at each of train_params.epoch_milestones. An epoch is num_repeats passes over
the training videos.

The run folder gets config.yaml, log.txt (mean losses per epoch, in the original's format), train-vis/
(a picture per epoch: source, driving with keypoints, deformed source, occlusion, prediction),
checkpoint.pth.tar (every checkpoint_freq epochs and at the end: `fom animate --checkpoint` reads it
without --config, and so does the original code) and TensorBoard scalars when tensorboard is installed.
With --keep-checkpoints each checkpoint is also kept under its epoch, checkpoint-00012.pth.tar after 12
epochs, as the original keeps them: `fom export` can average the last ones.

Under torchrun every process trains on its share of each batch (DistributedDataParallel, batch norm
synchronised across processes); only the first process writes anything.
"""

import copy
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from fom_cli.animation import pick_device
from fom_cli.checkpoint import (infer_config, load_state, make_checkpoint, read_checkpoint, save_checkpoint,
                                shape_mismatches)
from fom_cli.config import config_name, load_config, validate, without_private_keys
from fom_cli.drawing import draw_keypoints
from fom_cli.errors import BadCheckpoint, BadConfig, BadInput, BadOutput, FomError
from fom_cli.media import to_uint8
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
from fom_cli.training.data import DatasetRepeater, FramesDataset
from fom_cli.training.losses import (DiscriminatorFullModel, GeneratorFullModel, RandomTransform, load_vgg19,
                                     loss_weights)

CHECKPOINT_NAME = "checkpoint.pth.tar"
ADAM_BETAS = (0.5, 0.999)
# What train.py reads from train_params without a default. Here num_repeats defaults to 1 and
# checkpoint_freq to num_epochs (a checkpoint at the end only); transform_params is needed only with
# equivariance losses.
REQUIRED_TRAIN_PARAMS = ("num_epochs", "epoch_milestones", "lr_generator", "lr_discriminator", "lr_kp_detector",
                         "batch_size", "scales", "loss_weights")
# VGG19 pools four times before its last layer: smaller pyramid levels have nothing left to look at.
SMALLEST_VGG_INPUT = 16


def configure_parser(parser):
    parser.add_argument("--config", help="config name (vox-256, taichi-256, ...) or YAML path; may be left out with "
                                         "--resume or --init (then the checkpoint's own config is used)")
    parser.add_argument("--data", metavar="DIR",
                        help="training videos in DIR/train/ (overrides dataset_params.root_dir)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config>-<UTC time>/; with --resume, "
                                                     "the checkpoint's folder)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue a run exactly: weights, optimisers, schedules and epoch")
    start.add_argument("--init", metavar="CHECKPOINT",
                       help="start from a checkpoint's weights (fom's or an original one) with fresh optimisers")
    schedule = parser.add_argument_group("schedule (overrides train_params)")
    schedule.add_argument("--epochs", type=int, help="num_epochs: train until this many epochs are done")
    schedule.add_argument("--batch-size", type=int, help="batch_size, summed over all processes")
    schedule.add_argument("--num-repeats", type=int, help="num_repeats: passes over the videos per epoch")
    losses = parser.add_argument_group("losses")
    losses.add_argument("--vgg-weights", metavar="PATH",
                        help="VGG19 ImageNet weights for the perceptual loss (torchvision's vgg19-dcbb9e9d.pth), when "
                             "they are not in $TORCH_HOME/hub/checkpoints/")
    losses.add_argument("--no-perceptual", action="store_true",
                        help="no VGG19: pixel L1 on the image pyramid replaces the perceptual loss")
    running = parser.add_argument_group("running")
    running.add_argument("--workers", type=int, default=None,
                         help="data loading processes per training process (default: up to 4)")
    running.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    running.add_argument("--seed", type=int, default=0, help="initial weights, data order, augmentation and "
                                                             "warps all follow from it (default 0)")
    running.add_argument("--keep-checkpoints", action="store_true",
                         help="also keep every checkpoint as checkpoint-EPOCH.pth.tar (EPOCH: epochs done, 5 digits)")
    running.add_argument("--quiet", action="store_true", help="no progress bar or messages (log.txt is still written)")


def run(args):
    train(args)
    return 0


# --- the config ---------------------------------------------------------------------------------------------

def training_config(args, checkpoint, checkpoint_path):
    """The config to train with: --config (or the checkpoint's), with the command-line overrides applied."""
    if args.config:
        config = load_config(args.config)
    elif checkpoint is not None:
        config, _ = infer_config(checkpoint, checkpoint_path)
    else:
        raise BadConfig("fom train needs --config: a name such as vox-256 or a YAML file (see configs/)")
    config = copy.deepcopy(config)
    dataset_params = config.setdefault("dataset_params", {})
    train_params = config.setdefault("train_params", {})
    if args.data:
        dataset_params["root_dir"] = str(args.data)
    for flag, value, key in (("--epochs", args.epochs, "num_epochs"), ("--batch-size", args.batch_size, "batch_size"),
                             ("--num-repeats", args.num_repeats, "num_repeats")):
        if value is not None:
            if value < 1:
                raise BadConfig(f"{flag} must be 1 or more, got {value}")
            train_params[key] = value
    validate(config)

    name = config_name(config)
    missing = [key for key in REQUIRED_TRAIN_PARAMS if key not in train_params]
    if missing:
        flag = {"num_epochs": " (pass --epochs)", "batch_size": " (pass --batch-size)"}.get(missing[0], "")
        raise BadConfig(f"config {name} has no train_params.{missing[0]}{flag}, which training needs "
                        f"(configs/vox-256.yaml shows every training key)")
    if "root_dir" not in dataset_params:
        raise BadConfig("no training data: pass --data DIR (or set dataset_params.root_dir in the config)")
    weights = loss_weights(train_params)
    if weights["equivariance_value"] + weights["equivariance_jacobian"] != 0 and "transform_params" not in train_params:
        raise BadConfig(f"config {name} has equivariance losses but no train_params.transform_params")
    if weights["generator_gan"] != 0 and "discriminator_params" not in config["model_params"]:
        raise BadConfig(f"config {name} has a generator GAN loss but no model_params.discriminator_params")
    for key in ("num_epochs", "batch_size", "checkpoint_freq", "num_repeats"):
        if train_params.get(key, 1) < 1:
            raise BadConfig(f"train_params.{key} must be 1 or more, got {train_params[key]}")
    return config


def check_vgg_input_size(config):
    """The perceptual loss runs VGG19 on every pyramid level: each must be at least 16 px."""
    height, width = config["dataset_params"].get("frame_shape", [256, 256, 3])[:2]
    smallest = min(config["train_params"]["scales"])
    if min(height, width) * smallest < SMALLEST_VGG_INPUT:
        raise BadConfig(f"train_params.scales goes down to {smallest}, which makes {height}x{width} frames smaller "
                        f"than {SMALLEST_VGG_INPUT} px for VGG19; drop the smallest scales")


# --- processes and devices ----------------------------------------------------------------------------------

def distributed_environment():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain run."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def choose_device(name, local_rank):
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = pick_device(name)
    if device.type == "cuda":
        if device.index is None:   # one GPU per process: the process's own
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) that gradients flow through: the gradient of a sum over processes is the sum of the
    processes' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, gradient):
        gradient = gradient.clone()
        dist.all_reduce(gradient)
        return gradient


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm whose batch statistics are sums over every process's batch: torch.nn.SyncBatchNorm for
    CPUs (torch's own runs only on GPUs). All processes normalise alike and keep equal running statistics."""

    def forward(self, input):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        count = input.numel() // channels
        totals = _SumOverProcesses.apply(torch.cat([input.sum(dims), (input * input).sum(dims),
                                                    input.new_tensor([count])]))
        n = totals[-1]
        mean = totals[:channels] / n
        variance = (totals[channels:2 * channels] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(variance * n / (n - 1), momentum)   # unbiased, as batch norm keeps it
        shape = (1, channels) + (1,) * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def synchronise_batch_norm(module, device):
    """Batch norm over the whole batch of all processes, not each process's share: torch.nn.SyncBatchNorm
    on GPUs, CpuSyncBatchNorm on CPUs. Weights, statistics and state-dict keys stay as they were."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced.to(child.weight.device))
        else:
            synchronise_batch_norm(child, device)
    return module


def mean_over_processes(values, world_size):
    """{name: float} averaged over all processes (every process must call this with the same names)."""
    if world_size == 1 or not values:
        return values
    names = list(values)   # the same order in every process: the same code put them there
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {name: value / world_size for name, value in zip(names, tensor.tolist())}


def stream_seed(*keys):
    """A 63-bit seed that depends on every key (seed, epoch, rank, ...) and nothing else."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# --- the run folder: logs, pictures -------------------------------------------------------------------------

def run_folder(args, config):
    if args.out:
        out_dir = Path(args.out)
    elif args.resume:
        out_dir = Path(args.resume).parent
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out_dir = Path("runs") / f"{config_name(config)}-{stamp}"
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOutput(f"--out {out_dir} is a file; give a folder for the run")
    if not args.resume and (out_dir / CHECKPOINT_NAME).exists():
        raise BadOutput(f"{out_dir} already holds a training run; continue it with --resume "
                        f"{out_dir / CHECKPOINT_NAME} or choose another --out")
    return out_dir


def visualisation(batch, generated, kp_size=5, max_rows=6):
    """uint8 grid: one row per sample; columns source (its keypoints), driving (its keypoints), deformed
    source, occlusion map, prediction."""
    import torch.nn.functional as F

    def images(tensor):
        return list(tensor[:max_rows].detach().float().cpu().permute(0, 2, 3, 1).numpy())

    def keypoints(kp):
        return kp["value"][:max_rows].detach().float().cpu().numpy()

    source, driving = images(batch["source"]), images(batch["driving"])
    height, width = source[0].shape[:2]
    radius = max(1.0, kp_size * height / 256)   # kp_size is meant for 256 px frames
    columns = [[draw_keypoints(image, kp, radius) for image, kp in zip(source, keypoints(generated["kp_source"]))],
               [draw_keypoints(image, kp, radius) for image, kp in zip(driving, keypoints(generated["kp_driving"]))]]
    if "deformed" in generated:
        columns.append(images(generated["deformed"]))
    if "occlusion_map" in generated:
        occlusion = F.interpolate(generated["occlusion_map"][:max_rows].detach().float(), size=(height, width),
                                  mode="bilinear", align_corners=False)
        columns.append(images(occlusion.repeat(1, 3, 1, 1)))
    columns.append(images(generated["prediction"]))
    grid = np.concatenate([np.concatenate(column, axis=0) for column in columns], axis=1)
    return to_uint8(grid)


class RunLog:
    """What the first process writes besides checkpoints: log.txt, train-vis/, TensorBoard scalars."""

    def __init__(self, out_dir, config, quiet):
        self.out_dir = Path(out_dir)
        try:
            (self.out_dir / "train-vis").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadOutput(f"cannot create the run folder {self.out_dir}: {error.strerror}") from None
        self.quiet = quiet
        self.kp_size = config.get("visualizer_params", {}).get("kp_size", 5)
        with open(self.out_dir / "config.yaml", "w") as file:
            yaml.safe_dump(without_private_keys(config), file, sort_keys=False)
        self.log_file = open(self.out_dir / "log.txt", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter   # optional: needs the tensorboard package
            self.tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def note(self, message):
        """A remark for the user, also kept in log.txt (as a '#' line, apart from the loss lines)."""
        self.log_file.write(f"# {message}\n")
        self.log_file.flush()
        if not self.quiet:
            print(f"fom train: {message}", file=sys.stderr)

    def iteration(self, step, losses):
        if self.tensorboard is not None:
            for name, value in losses.items():
                self.tensorboard.add_scalar(f"loss/{name}", value, step)

    def epoch(self, epoch, mean_losses, learning_rates, batch, generated):
        # The original's line: "00000012) perceptual - 95.12345; equivariance_value - 0.31234; ..."
        losses = "; ".join(f"{name} - {value:.5f}" for name, value in mean_losses.items())
        self.log_file.write(f"{epoch:08d}) {losses}\n")
        self.log_file.flush()
        if self.tensorboard is not None:
            for name, value in mean_losses.items():
                self.tensorboard.add_scalar(f"epoch/{name}", value, epoch)
            for name, value in learning_rates.items():
                self.tensorboard.add_scalar(f"lr/{name}", value, epoch)
            self.tensorboard.flush()
        import imageio.v3 as iio
        iio.imwrite(self.out_dir / "train-vis" / f"{epoch:08d}-rec.png", visualisation(batch, generated, self.kp_size))

    def close(self):
        self.log_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


# --- networks, optimisers, checkpoints ----------------------------------------------------------------------

def load_weights(networks, checkpoint, path, fine_tune):
    """Load every network the checkpoint has. Returns notes for the user.

    Fine-tuning (--init) also accepts a checkpoint whose discriminator does not fit the config (e.g.
    fine-tuning vox-256 into vox-adv-256, whose discriminator also sees keypoints): that one starts afresh.
    """
    notes = []
    for name, module in networks.items():
        if name not in checkpoint:
            if name == "discriminator":
                notes.append(f"{Path(path).name} has no discriminator: it starts from random weights")
                continue
            raise BadCheckpoint(f"{path} has no {name} weights")
        if name == "discriminator" and fine_tune:
            expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
            problems = shape_mismatches({name: checkpoint[name]}, {name: expected})
            if problems:
                notes.append(f"the discriminator of {Path(path).name} does not fit the config ({problems[0]}): "
                             "it starts from random weights")
                continue
        if name == "generator" and fine_tune and module.blend_mask is not None:
            missing = {key for key in module.state_dict() if key.startswith("blend_mask.")} - set(checkpoint[name])
            if missing:
                # Fine-tuning a generator that did not blend into one that does: the new mask starts at
                # one half everywhere (its initial weights) and learns from there.
                state = {**module.state_dict(), **checkpoint[name]}
                load_state(module, state, name, path)
                notes.append(f"{Path(path).name} has no blend mask (blend_warped_source): it starts from its "
                             "initial weights")
                continue
        load_state(module, checkpoint[name], name, path)
    return notes


def build_networks(config, seed, checkpoint, checkpoint_path, fine_tune, world_size, device):
    """{name: network} on `device` in training mode, from the seed or the checkpoint; and notes for the user."""
    model_params = config["model_params"]
    # In the original's order; the seed makes the initial weights the same in every process.
    torch.manual_seed(seed)
    networks = {"generator": build_generator(model_params)}
    if "discriminator_params" in model_params:
        networks["discriminator"] = build_discriminator(model_params)
    networks["kp_detector"] = build_keypoint_detector(model_params)
    # The checkpoint keeps the grid_sample convention it was trained with, so it animates the same way.
    model_params["align_corners"] = networks["generator"].align_corners
    notes = []
    if checkpoint is not None:
        notes = load_weights(networks, checkpoint, checkpoint_path, fine_tune)
    if world_size > 1:
        networks = {name: synchronise_batch_norm(module, device) for name, module in networks.items()}
    return {name: module.to(device).train() for name, module in networks.items()}, notes


def build_optimizers(networks, train_params):
    """Adam for every network that trains, and its learning-rate schedule (10x lower at each milestone)."""
    learning_rates = {name: train_params[f"lr_{name}"] for name in networks}
    optimizers = {}
    for name, module in networks.items():
        if name == "kp_detector" and learning_rates[name] == 0:
            module.requires_grad_(False)   # a learning rate of 0 never changes it: skip its gradients
            continue
        optimizers[name] = torch.optim.Adam(module.parameters(), lr=learning_rates[name], betas=ADAM_BETAS)
    schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(optimizer, train_params["epoch_milestones"], gamma=0.1)
                  for name, optimizer in optimizers.items()}
    return optimizers, schedulers


def training_data(config, seed, rank, world_size, workers, device):
    """(dataset, sampler, loader): each epoch shuffled by the seed, each process reading its own share."""
    train_params = config["train_params"]
    dataset = FramesDataset(is_train=True, random_seed=seed, **config["dataset_params"])
    num_repeats = train_params.get("num_repeats", 1)
    if num_repeats != 1:
        dataset = DatasetRepeater(dataset, num_repeats)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    batch_size = train_params["batch_size"]
    loader = DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise BadInput(f"an epoch has {len(dataset)} samples (videos x num_repeats), fewer than the batch size "
                       f"{batch_size}: raise --num-repeats or lower --batch-size")
    return dataset, sampler, loader


def training_checkpoint(config, networks, optimizers, schedulers, epoch):
    """The original's checkpoint dict (networks, optimizer_<network>, epoch = the last finished epoch),
    plus the learning-rate schedules and RNG state, and fom's config and metadata."""
    extra = {f"optimizer_{name}": optimizer.state_dict() for name, optimizer in optimizers.items()}
    extra["epoch"] = epoch
    # Only the epoch count: milestones and gamma come from the config, the current rates are in the optimisers.
    extra.update({f"scheduler_{name}": {"last_epoch": scheduler.last_epoch} for name, scheduler in schedulers.items()})
    extra["rng"] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return make_checkpoint(config, networks, **extra)


def resume_state(checkpoint, path, optimizers, schedulers):
    """Restore optimisers, schedules and RNG from a checkpoint; returns the first epoch still to train."""
    for name, optimizer in optimizers.items():
        key = f"optimizer_{name}"
        if key not in checkpoint:
            raise BadCheckpoint(f"{path} has no {key} to resume from; start from its weights with --init instead")
        try:
            optimizer.load_state_dict(checkpoint[key])
        except (ValueError, KeyError) as error:
            raise BadCheckpoint(f"{path}: {key} does not fit this config's {name} ({error})") from None
    if not isinstance(checkpoint.get("epoch"), int):
        raise BadCheckpoint(f"{path} does not say which epoch it was saved at; start from it with --init instead")
    start_epoch = checkpoint["epoch"] + 1
    for name, scheduler in schedulers.items():
        # The original's checkpoints have no schedules: their epoch count says where the schedule is.
        scheduler.last_epoch = checkpoint.get(f"scheduler_{name}", {}).get("last_epoch", start_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    rng = checkpoint.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return start_epoch


# --- one training step --------------------------------------------------------------------------------------

def training_step(batch, device, generator_full, discriminator_full, discriminator, optimizers, transform):
    """One step of the keypoint detector and generator, then (GAN configs) of the discriminator.

    Returns ({loss name: float}, generated)."""
    source = batch["source"].to(device, non_blocking=True)
    driving = batch["driving"].to(device, non_blocking=True)
    losses, generated = generator_full(source, driving, discriminator, transform)
    sum(losses.values()).backward()
    for name in ("generator", "kp_detector"):
        if name in optimizers:
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

    if discriminator_full is not None:
        optimizers["discriminator"].zero_grad(set_to_none=True)
        discriminator_losses = discriminator_full(driving, generated["prediction"], generated["kp_driving"])
        sum(discriminator_losses.values()).backward()
        optimizers["discriminator"].step()
        optimizers["discriminator"].zero_grad(set_to_none=True)
        losses.update(discriminator_losses)
    return {name: value.item() for name, value in losses.items()}, generated


# --- the whole run ------------------------------------------------------------------------------------------

def train(args):
    """`fom train`. Returns a summary: out_dir, checkpoint, epochs, losses (one dict per iteration of this
    process), seconds_per_iteration and networks (the trained modules)."""
    rank, world_size, local_rank = distributed_environment()
    device = choose_device(args.device, local_rank)
    join_processes = world_size > 1 and not dist.is_initialized()
    if join_processes:
        # NCCL between GPUs; gloo for CPUs. torchrun's environment says where the other processes are.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(args, rank, world_size, device)
    finally:
        if join_processes:
            dist.destroy_process_group()


def _train(args, rank, world_size, device):
    is_main = rank == 0
    if args.seed < 0:
        raise FomError(f"--seed must be 0 or more, got {args.seed}")
    if args.workers is not None and args.workers < 0:
        raise FomError(f"--workers must be 0 or more, got {args.workers}")
    checkpoint_path = args.resume or args.init
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint_path else None
    config = training_config(args, checkpoint, checkpoint_path)
    train_params, model_params = config["train_params"], config["model_params"]
    num_epochs, batch_size = train_params["num_epochs"], train_params["batch_size"]
    if batch_size % world_size:
        raise BadConfig(f"the batch size {batch_size} does not split evenly over {world_size} processes; "
                        f"pass --batch-size with a multiple of {world_size}")
    out_dir = run_folder(args, config)

    # VGG19 first: without its weights, stop before anything else takes time.
    weights = loss_weights(train_params)
    use_vgg = sum(weights["perceptual"]) != 0 and not args.no_perceptual
    if use_vgg:
        check_vgg_input_size(config)
    vgg = load_vgg19(args.vgg_weights).to(device) if use_vgg else None

    networks, notes = build_networks(config, args.seed, checkpoint, checkpoint_path, bool(args.init), world_size,
                                     device)
    generator, kp_detector = networks["generator"], networks["kp_detector"]
    discriminator = networks.get("discriminator")
    optimizers, schedulers = build_optimizers(networks, train_params)
    start_epoch = 0
    if args.resume:
        start_epoch = resume_state(checkpoint, checkpoint_path, optimizers, schedulers)
        if start_epoch >= num_epochs:
            raise FomError(f"{checkpoint_path} has already trained {start_epoch} of {num_epochs} epochs; pass --epochs "
                           f"with more than {start_epoch} to train longer")
    del checkpoint

    # Losses. The discriminator trains only when the generator has a GAN loss, as in the original.
    if sum(weights["perceptual"]) != 0 and not use_vgg:
        notes.append("--no-perceptual: pixel L1 on the image pyramid replaces the VGG19 perceptual loss")
    generator_full = GeneratorFullModel(kp_detector, generator, train_params, vgg).to(device)
    discriminator_full = None
    if weights["generator_gan"] != 0:
        discriminator_full = DiscriminatorFullModel(discriminator, train_params,
                                                    model_params["common_params"]["num_channels"]).to(device)
    if world_size > 1:
        placement = {"device_ids": [device.index]} if device.type == "cuda" else {}
        generator_full = DistributedDataParallel(generator_full, **placement)
        if discriminator_full is not None:
            discriminator_full = DistributedDataParallel(discriminator_full, **placement)

    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    dataset, sampler, loader = training_data(config, args.seed, rank, world_size, workers, device)

    log = RunLog(out_dir, config, args.quiet) if is_main else None
    for note in notes if is_main else []:
        log.note(note)
    show_progress = is_main and not args.quiet
    if show_progress:
        print(f"fom train: {config_name(config)} on {device}" + (f" x {world_size} processes" if world_size > 1 else "")
              + f", {len(loader)} iterations per epoch, epochs {start_epoch + 1}-{num_epochs}, writing to {out_dir}",
              file=sys.stderr)

    from tqdm import tqdm
    history, iteration_seconds = [], []
    checkpoint_file = out_dir / CHECKPOINT_NAME
    try:
        for epoch in range(start_epoch, num_epochs):
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            # The equivariance warps of this epoch and process: a fresh stream per epoch, so a resumed run
            # draws exactly what the uninterrupted one would have.
            warp_generator = torch.Generator().manual_seed(stream_seed(args.seed, epoch, rank))
            sums = {}
            progress = tqdm(loader, desc=f"epoch {epoch + 1}/{num_epochs}", file=sys.stderr, disable=not show_progress,
                            dynamic_ncols=True, leave=False)
            started = time.perf_counter()
            for index, batch in enumerate(progress):
                transform = None
                if weights["equivariance_value"] + weights["equivariance_jacobian"] != 0:
                    transform = RandomTransform(batch["driving"].shape[0], **train_params["transform_params"],
                                                generator=warp_generator, device=device,
                                                align_corners=generator.align_corners)
                losses, generated = training_step(batch, device, generator_full, discriminator_full, discriminator,
                                                  optimizers, transform)
                history.append(losses)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                if log is not None:
                    log.iteration(epoch * len(loader) + index, losses)
                progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items()}, refresh=False)
                now = time.perf_counter()
                iteration_seconds.append(now - started)
                started = now

            with warnings.catch_warnings():
                # Without a generator GAN loss the discriminator's optimiser never steps; its schedule still
                # counts epochs, as the original's does.
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                for scheduler in schedulers.values():
                    scheduler.step()
            mean_losses = mean_over_processes({name: total / len(loader) for name, total in sums.items()}, world_size)
            if log is not None:
                rates = {name: optimizer.param_groups[0]["lr"] for name, optimizer in optimizers.items()}
                log.epoch(epoch, mean_losses, rates, batch, generated)
                if show_progress:
                    print(f"epoch {epoch + 1}/{num_epochs}: " + ", ".join(f"{name} {value:.4f}" for name, value
                                                                        in mean_losses.items()), file=sys.stderr)
                if (epoch + 1) % train_params.get("checkpoint_freq", num_epochs) == 0 or epoch == num_epochs - 1:
                    checkpoint = training_checkpoint(config, networks, optimizers, schedulers, epoch)
                    save_checkpoint(checkpoint_file, checkpoint)
                    if args.keep_checkpoints:
                        save_checkpoint(out_dir / f"checkpoint-{epoch + 1:05d}.pth.tar", checkpoint)
                    del checkpoint
            del batch, generated
    finally:
        if log is not None:
            log.close()

    # The first iteration pays for start-up (workers, memory allocation): leave it out of the speed.
    steady = iteration_seconds[1:] or iteration_seconds
    if show_progress:
        print(f"fom train: {len(history)} iterations, {np.median(steady):.2f} s each; checkpoint {checkpoint_file}; "
              f"animate with: fom animate SOURCE DRIVING --checkpoint {checkpoint_file} -o out.mp4", file=sys.stderr)
    return {"out_dir": out_dir, "checkpoint": checkpoint_file if is_main else None, "epochs": (start_epoch, num_epochs),
            "losses": history, "seconds_per_iteration": float(np.median(steady)) if steady else None,
            "networks": networks}
