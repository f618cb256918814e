"""Measure animation quality against ground truth: `fom evaluate-synth`.

  fom evaluate-synth --pairs 32 --json          # the bundled model (checkpoints/toon-128.pth)

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
import sys

import numpy as np
from tqdm import tqdm

from fom_cli.animate import default_checkpoint
from fom_cli.animation import Animator, load_model, pick_device
from fom_cli.config import frame_size, load_config
from fom_cli.errors import FomError
from fom_cli.evaluation import l1_distance
from fom_cli.media import to_uint8
from fom_cli.training.synth import render_video, sample_identity, sample_motion

# Training data sets come from `fom synth --seed K` with K small; the pairs here use their own stream
# key, so no training identity or motion is ever drawn again.
HELD_OUT_SEED = 20261128


def configure_parser(parser):
    parser.add_argument("--checkpoint", help="a model trained on `fom synth` data (default: the bundled toon-128)")
    parser.add_argument("--config", help="config name or YAML path (default: the checkpoint's own)")
    parser.add_argument("--pairs", type=int, default=32, help="identity pairs to animate (default 32)")
    parser.add_argument("--frames", type=int, default=32, help="frames per driving video (default 32)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"pair seed (default {HELD_OUT_SEED})")
    parser.add_argument("--adapt-scale", action="store_true",
                        help="scale relative motion by the keypoint clouds' size ratio (default off: the "
                             "truth moves both heads by the same pixels)")
    parser.add_argument("--strip", metavar="PNG", help="write a picture of the first three pairs here")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def synth_pair(seed, index, num_frames, size):
    """(driving video of identity B, truth: identity A with B's motion), uint8 (T, H, W, 3) each."""
    rng = np.random.default_rng([seed, 0x5EED, index])
    identity_a, identity_b = sample_identity(rng), sample_identity(rng)
    motion = sample_motion(rng, num_frames)
    return render_video(identity_b, motion, size), render_video(identity_a, motion, size)


def strip_row(driving, truth, predictions, columns=6):
    """Three rows for one pair: driving (B), truth (A with B's motion), fom's result, at a few times."""
    times = np.linspace(0, len(driving) - 1, columns).round().astype(int)
    rows = [np.concatenate([frames[t] for t in times], axis=1) for frames in (driving, truth, predictions)]
    return np.concatenate(rows, axis=0)


def evaluate_pairs(kp_detector, generator, config, pairs, num_frames, seed, adapt_scale=False, quiet=True):
    height, width = frame_size(config)
    if height != width:
        raise FomError("evaluate-synth renders square frames; the model's frame_shape is not square")
    per_pair, strips = [], []
    for index in tqdm(range(pairs), desc="pairs", unit="pair", file=sys.stderr, disable=quiet):
        driving, truth = synth_pair(seed, index, num_frames, height)
        driving, truth = driving.astype(np.float32) / 255, truth.astype(np.float32) / 255
        animator = Animator(kp_detector, generator, truth[0], mode="relative", adapt_scale=adapt_scale)
        animator.set_initial_frame(driving[0])
        predictions = animator.animate_all(driving, batch_size=8)
        per_pair.append({"l1": l1_distance(predictions, truth),
                         "copy_source_l1": l1_distance(np.broadcast_to(truth[:1], truth.shape), truth),
                         "first_frame_l1": l1_distance(predictions[:1], truth[:1])})
        if index < 3:
            strips.append(strip_row(to_uint8(driving), to_uint8(truth), to_uint8(predictions)))
    l1 = float(np.mean([pair["l1"] for pair in per_pair]))
    baseline = float(np.mean([pair["copy_source_l1"] for pair in per_pair]))
    # At the first frame relative motion is zero and the truth is the source itself: what is left there
    # is how faithfully the generator repaints the source, apart from any motion.
    first_frame = float(np.mean([pair["first_frame_l1"] for pair in per_pair]))
    report = {"pairs": pairs, "frames": num_frames, "size": height, "seed": seed, "mode": "relative",
              "adapt_scale": adapt_scale, "l1": l1, "copy_source_l1": baseline, "ratio": l1 / baseline,
              "first_frame_l1": first_frame, "per_pair": per_pair}
    return report, strips


def run(args):
    if args.pairs < 1 or args.frames < 2:
        raise FomError("--pairs must be at least 1 and --frames at least 2")
    config = load_config(args.config) if args.config else None
    checkpoint = args.checkpoint or default_checkpoint()
    config, kp_detector, generator, _ = load_model(checkpoint, config, device=pick_device(args.device))
    report, strips = evaluate_pairs(kp_detector, generator, config, args.pairs, args.frames, args.seed,
                                    args.adapt_scale, args.quiet)
    report["checkpoint"] = str(checkpoint)
    if args.strip:
        from fom_cli.media import write_image
        write_image(args.strip, np.concatenate(strips, axis=0))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['pairs']} held-out pairs: L1 {report['l1']:.5f}, copying the source {report['copy_source_l1']:.5f} "
              f"(ratio {report['ratio']:.3f}); at the first frame, with no motion yet: L1 {report['first_frame_l1']:.5f}")
    return 0
