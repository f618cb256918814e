"""Everything a training run is built from: the config with its command-line overrides, the device, the
networks (fresh, fine-tuned or resumed), their optimisers and schedules, the data, and the checkpoint."""

import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from fom_cli.runtime import pick_device
from fom_cli.checkpoint import infer_config, load_state, make_checkpoint, shape_mismatches
from fom_cli.config import config_family, config_name, load_config, validate
from fom_cli.errors import BadCheckpoint, BadConfig, BadInput
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
from fom_cli.training.data import DatasetRepeater, FramesDataset
from fom_cli.training.distributed import synchronise_batch_norm
from fom_cli.training.losses import loss_weights

ADAM_BETAS = (0.5, 0.999)
# What train.py reads from train_params without a default. Here num_repeats defaults to 1 and
# checkpoint_freq to num_epochs (a checkpoint at the end only); transform_params is needed only with
# equivariance losses.
REQUIRED_TRAIN_PARAMS = ("num_epochs", "epoch_milestones", "lr_generator", "lr_discriminator", "lr_kp_detector",
                         "batch_size", "scales", "loss_weights")
# VGG19 pools four times before its last layer: smaller pyramid levels have nothing left to look at.
SMALLEST_VGG_INPUT = 16


# --- the config ---------------------------------------------------------------------------------------------

def training_config(options, checkpoint, checkpoint_path):
    """The config to train with: --config (or the checkpoint's), with the command-line overrides applied."""
    if options.config:
        config = load_config(options.config)
    elif checkpoint is not None:
        config, _ = infer_config(checkpoint, checkpoint_path)
    else:
        raise BadConfig("fom train needs --config: a name such as vox-256 or a YAML file (see configs/)")
    if config_family(config) == "tpsmm":
        raise BadConfig(f"config {config_name(config)} is a Thin-Plate Spline Motion Model's: fom trains FOMM models "
                        "only (TPSMM checkpoints animate and reconstruct)")
    config = copy.deepcopy(config)
    dataset_params = config.setdefault("dataset_params", {})
    train_params = config.setdefault("train_params", {})
    if options.data:
        dataset_params["root_dir"] = str(options.data)
    for flag, value, key in (("--epochs", options.epochs, "num_epochs"), ("--batch-size", options.batch_size, "batch_size"),
                             ("--num-repeats", options.num_repeats, "num_repeats")):
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


def choose_device(name, local_rank):
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = pick_device(name)
    if device.type == "cuda":
        if device.index is None:   # one GPU per process: the process's own
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


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


# The options of `fom train` that belong to the run, not to one invocation, with their defaults: stored in
# every checkpoint, and kept by --resume unless the command line gives them again.
RUN_OPTIONS = {"no_perceptual": False, "keep_checkpoints": False, "seed": 0}


def resolve_run_options(options, resumed_checkpoint=None):
    """Fill in the run options the command line left unset (None): the resumed run's own, else the
    defaults. Returns {name: value} of those taken from the checkpoint."""
    stored = (resumed_checkpoint or {}).get("run_options") or {}
    restored = {}
    for name, default in RUN_OPTIONS.items():
        if getattr(options, name, None) is None:
            value = stored.get(name, default)
            setattr(options, name, value)
            if name in stored:
                restored[name] = value
    return restored


def training_checkpoint(config, networks, optimizers, schedulers, epoch, run_options=None):
    """The original's checkpoint dict (networks, optimizer_<network>, epoch = the last finished epoch),
    plus the learning-rate schedules and RNG state, the run options (RUN_OPTIONS) and fom's config and
    metadata."""
    extra = {f"optimizer_{name}": optimizer.state_dict() for name, optimizer in optimizers.items()}
    extra["epoch"] = epoch
    if run_options is not None:
        extra["run_options"] = dict(run_options)
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
