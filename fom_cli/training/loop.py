"""The training loop, as the original's train.py.

For every batch of (source, driving) frame pairs: one Adam step of the keypoint detector and the
generator on their losses (training/losses.py); then, when the config has a generator GAN loss, one step
of the discriminator. Every learning rate drops 10x at each of train_params.epoch_milestones. An epoch is
num_repeats passes over the training videos. Under torchrun every process trains on its share of each
batch; only the first process writes anything.
"""

import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fom_cli.checkpoint import read_checkpoint, save_checkpoint
from fom_cli.config import config_name
from fom_cli.errors import BadConfig, FomError
from fom_cli.fetch import resolve_checkpoint
from fom_cli.training.distributed import distributed_environment, mean_over_processes
from fom_cli.training.losses import DiscriminatorFullModel, GeneratorFullModel, RandomTransform, load_vgg19, \
    loss_weights
from fom_cli.training.run_log import CHECKPOINT_NAME, RunLog, run_folder
from fom_cli.training.setup import (RUN_OPTIONS, build_networks, build_optimizers, check_vgg_input_size,
                                    choose_device, resolve_run_options, resume_state, training_checkpoint,
                                    training_config, training_data)


def stream_seed(*keys):
    """A 63-bit seed that depends on every key (seed, epoch, rank, ...) and nothing else."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class Run:
    """One process's training run, as set up by `prepare_run`."""

    config: dict
    out_dir: object
    device: torch.device
    rank: int
    world_size: int
    networks: dict
    optimizers: dict
    schedulers: dict
    generator_full: torch.nn.Module
    discriminator_full: object  # None without a generator GAN loss
    start_epoch: int
    notes: list = field(default_factory=list)

    @property
    def is_main(self):
        return self.rank == 0


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

@dataclass
class TrainOptions:
    """What `fom train` is asked, as its options name it. None: the config's value (epochs, batch_size,
    num_repeats), or for the run's own options (no_perceptual, keep_checkpoints, seed) the resumed run's, else
    their defaults (setup.RUN_OPTIONS)."""

    config: Optional[str] = None
    data: Optional[str] = None
    out: Optional[str] = None
    resume: Optional[str] = None
    init: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    num_repeats: Optional[int] = None
    vgg_weights: Optional[str] = None
    no_perceptual: Optional[bool] = None
    workers: Optional[int] = None
    seed: Optional[int] = None
    keep_checkpoints: Optional[bool] = None
    device: str = "auto"
    quiet: bool = False


def train(options):
    """`fom train` with TrainOptions. Returns a summary: out_dir, checkpoint, epochs, iterations (of this process),
    epoch_losses (one dict of mean losses per epoch, over this process's iterations),
    seconds_per_iteration (the mean, leaving out the first) and networks (the trained modules). Nothing
    is kept per iteration: a run of a million iterations holds as much as one of ten."""
    rank, world_size, local_rank = distributed_environment()
    device = choose_device(options.device, local_rank)
    join_processes = world_size > 1 and not dist.is_initialized()
    if join_processes:
        # NCCL between GPUs; gloo for CPUs. torchrun's environment says where the other processes are.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        run = prepare_run(options, rank, world_size, device)
        return train_epochs(options, run)
    finally:
        if join_processes:
            dist.destroy_process_group()


def prepare_run(options, rank, world_size, device):
    """Config, run folder, networks (fresh, fine-tuned or resumed), optimisers and the loss modules."""
    if options.workers is not None and options.workers < 0:
        raise FomError(f"--workers must be 0 or more, got {options.workers}")
    # Training reads the whole original (discriminator, optimisers), not the slim file animation uses.
    checkpoint_path = resolve_checkpoint(options.resume or options.init, options.quiet or rank != 0, full=True)
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint_path else None
    restored = resolve_run_options(options, checkpoint if options.resume else None)
    config = training_config(options, checkpoint, checkpoint_path)
    train_params, model_params = config["train_params"], config["model_params"]
    num_epochs, batch_size = train_params["num_epochs"], train_params["batch_size"]
    if batch_size % world_size:
        raise BadConfig(f"the batch size {batch_size} does not split evenly over {world_size} processes; "
                        f"pass --batch-size with a multiple of {world_size}")
    out_dir = run_folder(options, config)

    # VGG19 first: without its weights, stop before anything else takes time.
    weights = loss_weights(train_params)
    use_vgg = sum(weights["perceptual"]) != 0 and not options.no_perceptual
    if use_vgg:
        check_vgg_input_size(config)
    vgg = load_vgg19(options.vgg_weights).to(device) if use_vgg else None

    networks, notes = build_networks(config, options.seed, checkpoint, checkpoint_path, bool(options.init), world_size,
                                     device)
    optimizers, schedulers = build_optimizers(networks, train_params)
    start_epoch = 0
    if options.resume:
        start_epoch = resume_state(checkpoint, checkpoint_path, optimizers, schedulers)
        if start_epoch >= num_epochs:
            raise FomError(f"{checkpoint_path} has already trained {start_epoch} of {num_epochs} epochs; pass --epochs "
                           f"with more than {start_epoch} to train longer")
    del checkpoint
    if restored:
        flags = {"no_perceptual": lambda on: "--no-perceptual" if on else "--perceptual",
                 "keep_checkpoints": lambda on: "--keep-checkpoints" if on else "--no-keep-checkpoints",
                 "seed": lambda seed: f"--seed {seed}"}
        notes.append("--resume keeps the run's options: " + " ".join(flags[name](value)
                                                                   for name, value in restored.items()))

    # Losses. The discriminator trains only when the generator has a GAN loss, as in the original.
    if sum(weights["perceptual"]) != 0 and not use_vgg:
        notes.append("--no-perceptual: pixel L1 on the image pyramid replaces the VGG19 perceptual loss")
    generator_full = GeneratorFullModel(networks["kp_detector"], networks["generator"], train_params, vgg).to(device)
    discriminator_full = None
    if weights["generator_gan"] != 0:
        discriminator_full = DiscriminatorFullModel(networks["discriminator"], train_params,
                                                    model_params["common_params"]["num_channels"]).to(device)
    if world_size > 1:
        placement = {"device_ids": [device.index]} if device.type == "cuda" else {}
        generator_full = DistributedDataParallel(generator_full, **placement)
        if discriminator_full is not None:
            discriminator_full = DistributedDataParallel(discriminator_full, **placement)
    return Run(config=config, out_dir=out_dir, device=device, rank=rank, world_size=world_size, networks=networks,
               optimizers=optimizers, schedulers=schedulers, generator_full=generator_full,
               discriminator_full=discriminator_full, start_epoch=start_epoch, notes=notes)


def train_epochs(options, run):
    """Train from run.start_epoch to the config's num_epochs, writing logs and checkpoints."""
    train_params = run.config["train_params"]
    num_epochs = train_params["num_epochs"]
    workers = options.workers if options.workers is not None else min(4, os.cpu_count() or 1)
    dataset, sampler, loader = training_data(run.config, options.seed, run.rank, run.world_size, workers, run.device)
    log = RunLog(run.out_dir, run.config, options.quiet) if run.is_main else None
    for note in run.notes if run.is_main else []:
        log.note(note)
    show_progress = run.is_main and not options.quiet
    if show_progress:
        processes = f" x {run.world_size} processes" if run.world_size > 1 else ""
        print(f"fom train: {config_name(run.config)} on {run.device}{processes}, {len(loader)} iterations per "
              f"epoch, epochs {run.start_epoch + 1}-{num_epochs}, writing to {run.out_dir}", file=sys.stderr)

    epoch_losses = []
    timing = {"iterations": 0, "steady_seconds": 0.0}  # running totals; the first iteration pays for start-up
    checkpoint_file = run.out_dir / CHECKPOINT_NAME
    try:
        for epoch in range(run.start_epoch, num_epochs):
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sums, batch, generated = train_one_epoch(options, run, loader, epoch, log, timing, show_progress)
            epoch_losses.append({name: total / len(loader) for name, total in sums.items()})
            with warnings.catch_warnings():
                # Without a generator GAN loss the discriminator's optimiser never steps; its schedule still
                # counts epochs, as the original's does.
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                for scheduler in run.schedulers.values():
                    scheduler.step()
            mean_losses = mean_over_processes(epoch_losses[-1], run.world_size)
            if log is not None:
                end_of_epoch(options, run, log, epoch, mean_losses, batch, generated, checkpoint_file, show_progress)
            del batch, generated
    finally:
        if log is not None:
            log.close()

    iterations = timing["iterations"]
    seconds_per_iteration = timing["steady_seconds"] / (iterations - 1) if iterations > 1 else None
    if show_progress and seconds_per_iteration is not None:
        print(f"fom train: {iterations} iterations, {seconds_per_iteration:.2f} s each; checkpoint {checkpoint_file}; "
              f"animate with: fom animate SOURCE DRIVING --checkpoint {checkpoint_file} -o out.mp4", file=sys.stderr)
    return {"out_dir": run.out_dir, "checkpoint": checkpoint_file if run.is_main else None,
            "epochs": (run.start_epoch, num_epochs), "iterations": iterations, "epoch_losses": epoch_losses,
            "seconds_per_iteration": seconds_per_iteration, "networks": run.networks}


def train_one_epoch(options, run, loader, epoch, log, timing, show_progress):
    """Every batch of one epoch, counting iterations and their seconds in `timing`; returns (loss sums, the
    last batch, its generated outputs)."""
    from fom_cli.progress import progress_bar

    train_params = run.config["train_params"]
    weights = loss_weights(train_params)
    generator = run.networks["generator"]
    # The equivariance warps of this epoch and process: a fresh stream per epoch, so a resumed run draws
    # exactly what the uninterrupted one would have.
    warp_generator = torch.Generator().manual_seed(stream_seed(options.seed, epoch, run.rank))
    sums = {}
    progress = progress_bar(loader, desc=f"epoch {epoch + 1}/{train_params['num_epochs']}",
                            disable=not show_progress, dynamic_ncols=True, leave=False)
    started = time.perf_counter()
    for index, batch in enumerate(progress):
        transform = None
        if weights["equivariance_value"] + weights["equivariance_jacobian"] != 0:
            transform = RandomTransform(batch["driving"].shape[0], **train_params["transform_params"],
                                        generator=warp_generator, device=run.device,
                                        align_corners=generator.align_corners)
        losses, generated = training_step(batch, run.device, run.generator_full, run.discriminator_full,
                                          run.networks.get("discriminator"), run.optimizers, transform)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        if log is not None:
            log.iteration(epoch * len(loader) + index, losses)
        progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items()}, refresh=False)
        now = time.perf_counter()
        if timing["iterations"]:  # the run's first iteration pays for start-up (workers, memory): left out
            timing["steady_seconds"] += now - started
        timing["iterations"] += 1
        started = now
    return sums, batch, generated


def end_of_epoch(options, run, log, epoch, mean_losses, batch, generated, checkpoint_file, show_progress):
    """The first process's work after an epoch: the log line, the picture and, when due, the checkpoint."""
    num_epochs = run.config["train_params"]["num_epochs"]
    rates = {name: optimizer.param_groups[0]["lr"] for name, optimizer in run.optimizers.items()}
    log.epoch(epoch, mean_losses, rates, batch, generated)
    if show_progress:
        print(f"epoch {epoch + 1}/{num_epochs}: " + ", ".join(f"{name} {value:.4f}" for name, value
                                                            in mean_losses.items()), file=sys.stderr)
    if (epoch + 1) % run.config["train_params"].get("checkpoint_freq", num_epochs) == 0 or epoch == num_epochs - 1:
        checkpoint = training_checkpoint(run.config, run.networks, run.optimizers, run.schedulers, epoch,
                                         {name: getattr(options, name) for name in RUN_OPTIONS})
        save_checkpoint(checkpoint_file, checkpoint)
        if options.keep_checkpoints:
            save_checkpoint(run.out_dir / f"checkpoint-{epoch + 1:05d}.pth.tar", checkpoint)
