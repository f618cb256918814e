"""Animation quality against synthetic ground truth (`fom evaluate-synth`).

Real videos have no ground truth for "identity A moving like identity B". `fom synth` does: it renders
appearance and motion separately, so A rendered with B's motion is exactly the right answer.
"""

import numpy as np

from fom_cli.config import frame_size
from fom_cli.errors import FomError
from fom_cli.evaluation.reconstruction import l1_distance
from fom_cli.media.images import to_uint8
from fom_cli.progress import progress_bar
from fom_cli.training.synth import render_video, sample_identity, sample_motion

# Training data sets come from `fom synth --seed K` with K small; the pairs here use their own stream
# key, so no training identity or motion is ever drawn again.
HELD_OUT_SEED = 20261128


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


def evaluate_pairs(networks, pairs, num_frames, seed, adapt_scale=False, quiet=True, precision="fp32"):
    """families.Networks animating `pairs` held-out synthetic pairs in `precision`; (report, strips)."""
    height, width = frame_size(networks.config)
    if height != width:
        raise FomError("evaluate-synth renders square frames; the model's frame_shape is not square")
    per_pair, strips = [], []
    for index in progress_bar(range(pairs), desc="pairs", unit="pair", disable=quiet):
        driving, truth = synth_pair(seed, index, num_frames, height)
        driving, truth = driving.astype(np.float32) / 255, truth.astype(np.float32) / 255
        animator = networks.animator(truth[0], mode="relative", adapt_scale=adapt_scale, precision=precision)
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
              "adapt_scale": adapt_scale, "precision": precision, "l1": l1, "copy_source_l1": baseline, "ratio": l1 / baseline,
              "first_frame_l1": first_frame, "per_pair": per_pair}
    return report, strips
