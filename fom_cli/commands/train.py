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

import argparse

from fom_cli.options import add_batch_size, add_config, add_device, add_quiet, non_negative_int, positive_int


def configure_parser(parser):
    add_config(parser, "config name (vox-256, taichi-256, ...) or YAML path; may be left out with --resume or "
                       "--init (then the checkpoint's own config is used)")
    parser.add_argument("--data", metavar="DIR",
                        help="training videos in DIR/train/ (overrides dataset_params.root_dir)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config>-<UTC time>/; with --resume, "
                                                     "the checkpoint's folder)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue a run exactly: weights, optimisers, schedules and epoch (a checkpoint file, or "
                            "a released model's name: vox, ...)")
    start.add_argument("--init", metavar="CHECKPOINT",
                       help="start from a checkpoint's weights (fom's, an original one, or a released model's name: "
                            "vox, ...) with fresh optimisers")
    schedule = parser.add_argument_group("schedule (overrides train_params)")
    schedule.add_argument("--epochs", type=positive_int, help="num_epochs: train until this many epochs are done")
    add_batch_size(schedule, "batch_size, summed over all processes")
    schedule.add_argument("--num-repeats", type=positive_int, help="num_repeats: passes over the videos per epoch")
    losses = parser.add_argument_group("losses")
    losses.add_argument("--vgg-weights", metavar="PATH",
                        help="VGG19 ImageNet weights for the perceptual loss (torchvision's vgg19-dcbb9e9d.pth), when "
                             "they are not in $TORCH_HOME/hub/checkpoints/")
    # The run's own options (no_perceptual, keep_checkpoints, seed) default to None, "not given": --resume
    # then keeps what the run was started with (training/setup.py: RUN_OPTIONS).
    losses.add_argument("--no-perceptual", dest="no_perceptual", action="store_const", const=True, default=None,
                        help="no VGG19: pixel L1 on the image pyramid replaces the perceptual loss (a resumed run "
                             "keeps its choice)")
    losses.add_argument("--perceptual", dest="no_perceptual", action="store_const", const=False,
                        help="with --resume: the VGG19 perceptual loss again, for a run started with --no-perceptual")
    running = parser.add_argument_group("running")
    running.add_argument("--workers", type=non_negative_int, default=None,
                         help="data loading processes per training process (default: up to 4)")
    add_device(running)
    running.add_argument("--seed", type=non_negative_int, default=None, help="initial weights, data order, augmentation "
                                                                "and warps all follow from it (default 0; a resumed "
                                                                "run keeps its own)")
    running.add_argument("--keep-checkpoints", action=argparse.BooleanOptionalAction, default=None,
                         help="also keep every checkpoint as checkpoint-EPOCH.pth.tar (EPOCH: epochs done, 5 digits; "
                              "a resumed run keeps its choice)")
    add_quiet(running, "no progress bar or messages (log.txt is still written)")


def train_options(args):
    """TrainOptions from this command's options."""
    from dataclasses import fields

    from fom_cli.training.loop import TrainOptions  # torch, only when training

    return TrainOptions(**{field.name: getattr(args, field.name) for field in fields(TrainOptions)})


def run(args):
    from fom_cli.training.loop import train  # torch, only when training

    train(train_options(args))
    return 0
