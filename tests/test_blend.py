"""fom's addition to the generator, `blend_warped_source` (used by the bundled toon-128): the frame is the
decoder's painting mixed with the source image warped by the same flow, by a mask the decoder predicts."""

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from fom_cli.animation import Animator
from fom_cli.commands.bench import pipeline_animation, random_networks, straightforward_animation, synthetic_frames
from fom_cli.config import load_config, validate, without_private_keys
from fom_cli.errors import BadConfig
from fom_cli.models import build_generator
from fom_cli.models.inference import optimize_for_inference


def blending_networks(seed=3):
    """toon-128's networks with random weights, the blend mask's included (it starts at zero)."""
    config = load_config("toon-128")
    assert config["model_params"]["generator_params"]["blend_warped_source"]
    kp_detector, generator = random_networks(config, seed=seed)
    with torch.no_grad():
        generator.blend_mask.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return kp_detector, generator


def test_the_frame_is_the_painting_and_the_warped_source_mixed_by_the_mask():
    kp_detector, generator = blending_networks()
    frames = torch.from_numpy(synthetic_frames(3, (128, 128), seed=4)).permute(0, 3, 1, 2)
    source, driving = frames[:1], frames[1:]
    with torch.no_grad():
        kp_source, kp_driving = kp_detector(source), kp_detector(driving)
        out = generator(source, kp_driving=kp_driving, kp_source=kp_source)
        # The same network's two ingredients, taken apart by hand.
        features = generator.animate_features(generator.encode(source), out)
        hidden = generator.bottleneck(features)
        for block in generator.up_blocks:
            hidden = block(hidden)
        painted = torch.sigmoid(generator.final(hidden))
        mask = torch.sigmoid(generator.blend_mask(hidden))
    expected = mask * out["deformed"] + (1 - mask) * painted
    assert torch.allclose(out["prediction"], expected, atol=1e-6)
    assert float(mask.std()) > 0.02   # a real per-pixel mix, not a constant
    assert float((out["deformed"] - painted).abs().mean()) > 0.05   # and the two ingredients differ

    # A fresh mask (zero weights) is one half everywhere.
    fresh = build_generator(load_config("toon-128")["model_params"])
    hidden = torch.randn(2, fresh.blend_mask.in_channels, 8, 8)
    assert torch.equal(torch.sigmoid(fresh.blend_mask(hidden)), torch.full((2, 1, 8, 8), 0.5))


@pytest.mark.parametrize("prepack", [False, True], ids=["rewrites", "rewrites-prepacked"])
def test_the_animation_pipeline_blends_as_the_straightforward_path_does(prepack):
    kp_detector, generator = blending_networks()
    frames = synthetic_frames(6, (128, 128), seed=5)
    source, driving = frames[0], frames[1:]
    expected = straightforward_animation(kp_detector, generator, source, driving, device=torch.device("cpu"))
    animator = Animator(optimize_for_inference(kp_detector, prepack=prepack),
                        optimize_for_inference(generator, prepack=prepack), source)
    ours = pipeline_animation(animator, driving, batch_size=3)   # batches of 3 and 2, decoded one by one
    assert ours.shape == expected.shape == (5, 128, 128, 3)
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(expected[4] - expected[0]).max() > 1e-3


def test_blending_without_a_dense_motion_network_is_a_config_error(tmp_path, capsys):
    config = load_config("toon-128")
    del config["model_params"]["generator_params"]["dense_motion_params"]
    with pytest.raises(ValueError, match="blend_warped_source needs a dense motion network"):
        build_generator(config["model_params"])
    path = tmp_path / "no-motion.yaml"
    path.write_text(yaml.safe_dump(without_private_keys(config)))
    code, _, err = run_cli(["train", "--config", path, "--data", tmp_path, "--no-perceptual"], capsys)
    assert code == 2 and err.count("\n") == 1 and "blend_warped_source' needs dense_motion_params" in err
    config["model_params"]["generator_params"]["blend_warped_source"] = "yes"
    with pytest.raises(BadConfig, match="blend_warped_source' must be true or false"):
        validate(config)
