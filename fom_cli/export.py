"""Slim a training checkpoint down to what animation needs: `fom export`.

  fom export runs/toon-128/checkpoint.pth.tar -o checkpoints/toon-128.pth

A training checkpoint carries the discriminator and three optimiser states besides the two networks
that animate (about three times their size). The exported file keeps the generator and the keypoint
detector under the original key names, the config that built them (so `fom animate` needs no
--config) and fom's metadata, plus the training epoch. Original FOMM checkpoints export too: their
config is inferred from the tensor shapes, as `fom animate` does.
"""

import sys
from pathlib import Path

from fom_cli.checkpoint import infer_config, load_state, read_checkpoint, save_checkpoint
from fom_cli.config import config_name, load_config, without_private_keys
from fom_cli.errors import BadOutput
from fom_cli.models import build_generator, build_keypoint_detector


def configure_parser(parser):
    parser.add_argument("checkpoint", help="a checkpoint from `fom train` or an original FOMM one")
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

    checkpoint = read_checkpoint(args.checkpoint)
    config = load_config(args.config) if args.config else infer_config(checkpoint, args.checkpoint)[0]
    # Building the networks checks that every tensor fits the config before anything is written.
    model_params = config["model_params"]
    for network, module in (("kp_detector", build_keypoint_detector(model_params)),
                            ("generator", build_generator(model_params))):
        load_state(module, checkpoint[network], network, args.checkpoint)

    slim = {"generator": checkpoint["generator"], "kp_detector": checkpoint["kp_detector"],
            "config": without_private_keys(config),
            "fom": dict(checkpoint.get("fom", {}), config_name=config_name(config),
                        exported_from=Path(args.checkpoint).name)}
    if "epoch" in checkpoint:
        slim["epoch"] = int(checkpoint["epoch"])
    save_checkpoint(output, slim)
    if not args.quiet:
        size = output.stat().st_size / 2 ** 20
        print(f"wrote {output} ({size:.1f} MiB: generator and keypoint detector, config {config_name(config)})",
              file=sys.stderr)
    return 0
