"""Shared test helpers. Fixture data (produced by the original FOMM code) lives in tests/fixtures/."""

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "fomm-parity"
SMALL_CONFIG = PARITY / "small.yaml"
SMALL_CHECKPOINT = PARITY / "small.pth.tar"
ORIGINAL_CONFIGS = ["vox-256", "vox-adv-256", "taichi-256", "taichi-adv-256", "bair-256", "fashion-256",
                    "mgif-256", "nemo-256"]

# Two cores: keep torch from oversubscribing them when pytest runs alongside ffmpeg threads.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def reference():
    """{align_corners: arrays from the original code}: small.npz is False, small-ac.npz is True."""
    return {False: dict(np.load(PARITY / "small.npz")), True: dict(np.load(PARITY / "small-ac.npz"))}


def run_cli(args, capsys=None):
    """Run `fom ARGS` in-process; returns (exit code, stdout, stderr) when capsys is given."""
    from fom_cli.cli import main

    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse usage errors
        code = exit.code
    if capsys is None:
        return code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
