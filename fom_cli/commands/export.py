"""Slim a training checkpoint down to what animation needs, or write it as ONNX graphs: `fom export`.

  fom export runs/toon-128/checkpoint.pth.tar -o checkpoints/toon-128.pth

A training checkpoint carries the discriminator and three optimiser states besides the two networks
that animate (about three times their size). The exported file keeps the generator and the keypoint
detector under the original key names, the config that built them (so `fom animate` needs no
--config) and fom's metadata, plus the training epoch. Original FOMM checkpoints export too: their
config is inferred from the tensor shapes, as `fom animate` does. A TPSMM checkpoint exports its
inpainting, dense motion, keypoint and AVD networks (the background predictor, used in training only,
stays behind).

Given several checkpoints of one run, it averages their weights and BatchNorm statistics (stochastic
weight averaging, Izmailov et al. 2018):

  fom train ... --keep-checkpoints
  fom export runs/toon-128/checkpoint-000{21..40}.pth.tar -o toon-128.pth

At a constant learning rate the weights wander around a low region of the loss surface, each step
pushed by the noise of its batch; their average sits nearer that region's middle and is usually better
than any single checkpoint, without the slow steps a smaller learning rate would take.

With --onnx DIR it writes the graphs fom's pipeline runs instead (onnx_graphs.py):

  fom export vox --onnx vox-onnx/
  fom animate face.png talk.mp4 -o out.mp4 --checkpoint vox-onnx/    # runs them with onnxruntime
"""

import sys
from pathlib import Path

from fom_cli.checkpoint import infer_config, load_state, read_checkpoint, save_checkpoint, slim_checkpoint
from fom_cli.config import config_family, config_name, load_config
from fom_cli.errors import BadInput, BadOutput
from fom_cli.media.files import same_path
from fom_cli.models import build_generator, build_keypoint_detector
from fom_cli.options import add_config, add_quiet
from fom_cli.fetch import resolve_checkpoint


def configure_parser(parser):
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a checkpoint from `fom train`, an original FOMM one, or a released model's name (vox, "
                             "...); several of one run: their weights are averaged")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-o", "--output", metavar="PATH", help="the slim checkpoint to write")
    what.add_argument("--onnx", metavar="DIR",
                      help="write ONNX graphs to this new folder instead: keypoints.onnx, source.onnx, frame.onnx "
                           "(and avd.onnx) and model.json, for onnxruntime (--backend onnxruntime), TensorRT, "
                           "OpenVINO, ... (needs pip install 'fom[onnx]'; README: ONNX)")
    add_config(parser)
    parser.add_argument("--align-corners", choices=("true", "false"), default=None,
                        help="with --onnx: the grid_sample convention built into the graphs (default: the config's)")
    add_quiet(parser, "no summary line")


def run(args):
    if args.onnx:
        return run_onnx(args)
    if args.align_corners is not None:
        raise BadInput("--align-corners goes with --onnx: a slim checkpoint keeps no convention (fom animate takes it)")
    output = Path(args.output)
    if output.is_dir():
        raise BadOutput(f"{output} is a directory; give the file name to write")
    if not output.parent.is_dir():
        raise BadOutput(f"cannot write {output}: the directory {output.parent} does not exist")
    for path in args.checkpoints:
        if same_path(output, path):  # a training checkpoint slimmed onto itself would lose its optimisers
            raise BadOutput(f"the output {output} is the checkpoint {path}: writing it would destroy the input; "
                            f"choose another output path")

    # One checkpoint in memory at a time, plus the running sums: vox-256 training checkpoints are 0.7 GB each.
    config, networks, last, sums = None, None, None, None
    for path in args.checkpoints:
        last = read_checkpoint(resolve_checkpoint(path, args.quiet))
        if config is None:
            config = load_config(args.config) if args.config else infer_config(last, path)[0]
            networks = animation_networks(config, last)
            sums = {network: {} for network in networks}
        # Loading into the networks checks that every tensor fits the config before anything is written.
        for network, module in networks.items():
            load_state(module, last[network], network, path)
            add_weights(sums[network], last[network])

    names = [Path(path).name for path in args.checkpoints]
    averaged = {network: averaged_weights(sums[network], last[network], len(names)) for network in sums}
    slim = slim_checkpoint({**last, **averaged}, config, tuple(networks),
                           exported_from=names[0] if len(names) == 1 else names)
    save_checkpoint(output, slim)
    if not args.quiet:
        size = output.stat().st_size / 2 ** 20
        averaged = f", the average of {len(names)} checkpoints" if len(names) > 1 else ""
        kept = "generator and keypoint detector" if "generator" in networks else ", ".join(networks)
        print(f"wrote {output} ({size:.1f} MiB: {kept}{averaged}, config {config_name(config)})", file=sys.stderr)
    return 0


def run_onnx(args):
    """fom export CHECKPOINT --onnx DIR (onnx_graphs.export_onnx)."""
    from fom_cli.onnx_graphs import check_export_folder, export_onnx, require_onnx

    require_onnx()
    if len(args.checkpoints) > 1:
        raise BadInput("--onnx exports one checkpoint: average several first (fom export A B ... -o average.pth), "
                       "then export that")
    output = Path(args.onnx)
    check_export_folder(output)
    if not output.parent.is_dir():
        raise BadOutput(f"cannot write {output}: the directory {output.parent} does not exist")
    checkpoint = resolve_checkpoint(args.checkpoints[0], args.quiet)
    if same_path(output, checkpoint):
        raise BadOutput(f"the output {output} is the checkpoint {checkpoint}; choose another folder")
    align_corners = None if args.align_corners is None else args.align_corners == "true"
    description = export_onnx(checkpoint, output, load_config(args.config) if args.config else None, align_corners)
    if not args.quiet:
        size = sum(path.stat().st_size for path in output.iterdir()) / 2 ** 20
        print(f"wrote {output} ({size:.1f} MiB: {', '.join(graph['file'] for graph in description['graphs'].values())}"
              f" and model.json; {description['family'].upper()}, config {description['config_name']}, "
              f"align_corners {str(description['align_corners']).lower()})", file=sys.stderr)
    return 0


def animation_networks(config, checkpoint):
    """{checkpoint key: network} of what animates: FOMM's generator and keypoint detector, or TPSMM's
    inpainting, dense motion and keypoint networks and its AVD network where the checkpoint has one."""
    if config_family(config) == "tpsmm":
        from fom_cli.models.tpsmm import build_tpsmm_networks

        networks = build_tpsmm_networks(config["model_params"])
        return {name: network for name, network in networks.items()
                if name != "bg_predictor" and (name != "avd_network" or name in checkpoint)}
    return {"kp_detector": build_keypoint_detector(config["model_params"]),
            "generator": build_generator(config["model_params"])}


def add_weights(sums, state_dict):
    """Add a state dict's floating-point tensors (weights, BatchNorm running statistics) to `sums`."""
    for key, value in state_dict.items():
        if value.is_floating_point():
            sums[key] = sums[key] + value.double() if key in sums else value.double()


def averaged_weights(sums, last, count):
    """The mean of every floating-point tensor; integer ones (BatchNorm's batch counters) are the last
    state dict's."""
    return {key: (sums[key] / count).to(value.dtype) if value.is_floating_point() else value
            for key, value in last.items()}
