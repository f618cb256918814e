"""Slim a training checkpoint down to what animation needs: `fom export`.

  fom export runs/toon-128/checkpoint.pth.tar -o checkpoints/toon-128.pth

A training checkpoint carries the discriminator and three optimiser states besides the two networks
that animate (about three times their size). The exported file keeps the generator and the keypoint
detector under the original key names, the config that built them (so `fom animate` needs no
--config) and fom's metadata, plus the training epoch. Original FOMM checkpoints export too: their
config is inferred from the tensor shapes, as `fom animate` does.

Given several checkpoints of one run, it averages their weights and BatchNorm statistics (stochastic
weight averaging, Izmailov et al. 2018):

  fom train ... --keep-checkpoints
  fom export runs/toon-128/checkpoint-000{21..40}.pth.tar -o toon-128.pth

At a constant learning rate the weights wander around a low region of the loss surface, each step
pushed by the noise of its batch; their average sits nearer that region's middle and is usually better
than any single checkpoint, without the slow steps a smaller learning rate would take.
"""

import sys
from pathlib import Path

from fom_cli.checkpoint import infer_config, load_state, read_checkpoint, save_checkpoint
from fom_cli.config import config_name, load_config, without_private_keys
from fom_cli.errors import BadOutput
from fom_cli.models import build_generator, build_keypoint_detector


def configure_parser(parser):
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a checkpoint from `fom train` or an original FOMM one; several of one run: their "
                             "weights are averaged")
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help="the slim checkpoint to write")
    parser.add_argument("--config", help="config name or YAML path (default: the checkpoint's own, or the "
                                         "bundled config whose tensor shapes match)")
    parser.add_argument("--quiet", action="store_true", help="no summary line")


def run(args):
    output = Path(args.output)
    if output.is_dir():
        raise BadOutput(f"{output} is a directory; give the file name to write")
    if not output.parent.is_dir():
        raise BadOutput(f"cannot write {output}: the directory {output.parent} does not exist")

    checkpoints = [read_checkpoint(path) for path in args.checkpoints]
    last, last_path = checkpoints[-1], args.checkpoints[-1]
    config = load_config(args.config) if args.config else infer_config(last, last_path)[0]
    # Building the networks checks that every tensor fits the config before anything is written.
    model_params = config["model_params"]
    for checkpoint, path in zip(checkpoints, args.checkpoints):
        for network, module in (("kp_detector", build_keypoint_detector(model_params)),
                                ("generator", build_generator(model_params))):
            load_state(module, checkpoint[network], network, path)

    names = [Path(path).name for path in args.checkpoints]
    slim = {"generator": average_weights([checkpoint["generator"] for checkpoint in checkpoints]),
            "kp_detector": average_weights([checkpoint["kp_detector"] for checkpoint in checkpoints]),
            "config": without_private_keys(config),
            "fom": dict(last.get("fom", {}), config_name=config_name(config),
                        exported_from=names[0] if len(names) == 1 else names)}
    if "epoch" in last:
        slim["epoch"] = int(last["epoch"])
    save_checkpoint(output, slim)
    if not args.quiet:
        size = output.stat().st_size / 2 ** 20
        averaged = f", the average of {len(checkpoints)} checkpoints" if len(checkpoints) > 1 else ""
        print(f"wrote {output} ({size:.1f} MiB: generator and keypoint detector{averaged}, config "
              f"{config_name(config)})", file=sys.stderr)
    return 0


def average_weights(state_dicts):
    """The mean of every floating-point tensor (weights, BatchNorm running statistics); integer ones (the
    BatchNorm batch counters) are taken from the last state dict."""
    if len(state_dicts) == 1:
        return state_dicts[0]
    average = {}
    for key, last in state_dicts[-1].items():
        if last.is_floating_point():
            average[key] = (sum(state[key].double() for state in state_dicts) / len(state_dicts)).to(last.dtype)
        else:
            average[key] = last
    return average
