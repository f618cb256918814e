"""`fom evaluate-synth`: ground truth for cross-identity animation from the procedural renderer."""

import json

import imageio.v3 as iio
import numpy as np

from conftest import SMALL_CHECKPOINT, SMALL_CONFIG, run_cli
from fom_cli.evaluation.synthetic import synth_pair
from fom_cli.training.synth import render_video, sample_identity, sample_motion


def test_the_truth_is_identity_a_with_the_driving_motion():
    driving, truth = synth_pair(seed=5, index=0, num_frames=6, size=64)
    assert driving.shape == truth.shape == (6, 64, 64, 3)
    rng = np.random.default_rng([5, 0x5EED, 0])
    identity_a, identity_b, motion = sample_identity(rng), sample_identity(rng), sample_motion(rng, 6)
    assert np.array_equal(truth, render_video(identity_a, motion, 64))
    assert np.array_equal(driving, render_video(identity_b, motion, 64))
    assert not np.array_equal(driving[0], truth[0])          # two different faces
    assert not np.array_equal(truth[0], truth[-1])           # that move


def test_the_quality_command_reports_both_numbers(tmp_path, capsys):
    strip = tmp_path / "strip.png"
    code, out, err = run_cli(["evaluate-synth", "--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG,
                              "--pairs", 2, "--frames", 4, "--json", "--quiet", "--strip", strip], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["pairs"] == 2 and len(report["per_pair"]) == 2
    assert report["l1"] > 0 and report["copy_source_l1"] > 0
    assert abs(report["ratio"] - report["l1"] / report["copy_source_l1"]) < 1e-12
    # The first frame's error is the mean of the pairs' own, and no pair's is zero (the model repaints).
    assert report["first_frame_l1"] == np.mean([pair["first_frame_l1"] for pair in report["per_pair"]]) > 0
    assert iio.imread(strip).shape == (2 * 3 * 128, 6 * 128, 3)   # rows driving/truth/result per pair
