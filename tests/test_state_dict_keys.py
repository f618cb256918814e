"""The networks' state dicts match the original checkpoints' keys, shapes and dtypes, for every config."""

import pytest
import torch

from conftest import FIXTURES, ORIGINAL_CONFIGS
from fom_cli.config import load_config
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector


def original_listing(name):
    """[(module, key, shape, dtype)] in state-dict order, from fixtures/fomm-keys/<name>.txt."""
    entries = []
    for line in (FIXTURES / "fomm-keys" / f"{name}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        module, key, shape, dtype = line.split()
        entries.append((module, key, () if shape == "-" else tuple(int(s) for s in shape.split(",")), dtype))
    return entries


@pytest.mark.parametrize("name", ORIGINAL_CONFIGS)
def test_state_dict_keys_shapes_and_dtypes_match_the_original(name):
    model_params = load_config(name)["model_params"]
    ours = []
    with torch.device("meta"):  # shapes without allocating 60M parameters per config
        for module, network in (("generator", build_generator(model_params)),
                                ("kp_detector", build_keypoint_detector(model_params)),
                                ("discriminator", build_discriminator(model_params))):
            for key, value in network.state_dict().items():
                ours.append((module, key, tuple(value.shape), str(value.dtype).replace("torch.", "")))
    # The listing is grouped by module in its own order; compare module by module, in state-dict order.
    expected = original_listing(name)
    for module in ("generator", "kp_detector", "discriminator"):
        assert [e for e in ours if e[0] == module] == [e for e in expected if e[0] == module], module
