"""Measure animation quality against ground truth: `fom evaluate-synth`.

  fom evaluate-synth --pairs 32 --json          # the bundled model (checkpoints/toon-128.pth)
  fom evaluate-synth --precision bf16           # the same in bf16: compare its ratio with fp32's

Real videos have no ground truth for "identity A moving like identity B". `fom synth` does: it renders
appearance and motion separately, so A rendered with B's motion is exactly the right answer. For each of
N pairs (drawn from a seed never used in training), the command renders B's video (the driving video)
and A with the same motion (the truth), animates A's first frame with B's video in relative mode, and
reports the mean L1 distance to the truth next to the copy-the-source baseline (every frame = A's
first frame), and the L1 at the first frame alone, where no motion is asked for: the part of the error
that is the generator's repainting of the source rather than motion. `--strip PATH` also writes a PNG
with a few of the results for looking at.
"""

import json

import numpy as np

from fom_cli.families import load_networks
from fom_cli.runtime import choose_precision, pick_device
from fom_cli.config import load_config
from fom_cli.errors import FomError
from fom_cli.evaluation.synthetic import HELD_OUT_SEED, evaluate_pairs
from fom_cli.media.images import write_image
from fom_cli.fetch import checkpoint_or_bundled
from fom_cli.options import add_checkpoint, add_config, add_device, add_precision, add_quiet, positive_int


def configure_parser(parser):
    add_checkpoint(parser, "a model trained on `fom synth` data (default: the bundled toon-128)")
    add_config(parser, "config name or YAML path (default: the checkpoint's own)")
    parser.add_argument("--pairs", type=positive_int, default=32, help="identity pairs to animate (default 32)")
    parser.add_argument("--frames", type=positive_int, default=32, help="frames per driving video (default 32)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"pair seed (default {HELD_OUT_SEED})")
    parser.add_argument("--adapt-scale", action="store_true",
                        help="scale relative motion by the keypoint clouds' size ratio (default off: the "
                             "truth moves both heads by the same pixels)")
    parser.add_argument("--strip", metavar="PNG", help="write a picture of the first three pairs here")
    add_device(parser)
    add_precision(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_quiet(parser, "no progress bar")


def run(args):
    if args.frames < 2:
        raise FomError("--frames must be at least 2")
    config = load_config(args.config) if args.config else None
    checkpoint = checkpoint_or_bundled(args.checkpoint, args.quiet)
    device = pick_device(args.device)
    precision, _ = choose_precision(args.precision, device)
    networks = load_networks(checkpoint, config, device=device, precision=precision)
    report, strips = evaluate_pairs(networks, args.pairs, args.frames, args.seed, args.adapt_scale, args.quiet,
                                    precision)
    report["checkpoint"] = str(checkpoint)
    if args.strip:
        write_image(args.strip, np.concatenate(strips, axis=0))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['pairs']} held-out pairs, {precision}: L1 {report['l1']:.5f}, copying the source {report['copy_source_l1']:.5f} "
              f"(ratio {report['ratio']:.3f}); at the first frame, with no motion yet: L1 {report['first_frame_l1']:.5f}")
    return 0
