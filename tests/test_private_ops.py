"""CPU inference's private torch ops (oneDNN weight prepacking, the int8 split) are never load-bearing:
each one made to fail, or to compute something else, leaves animation working and exact, with a one-line
note; FOM_NO_PRIVATE_OPS=1 leaves them out; the split scales each sample on its own."""

import numpy as np
import pytest
import torch

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, run_cli
from fom_cli.models import inference, private_ops
from fom_cli.models.private_ops import Conv, Int8SplitConv

SOURCE = PARITY / "small-source.png"
DRIVING_DIR = PARITY / "small-driving"
# fp32: the private ops are the float32 path (auto would pick bf16 on a CPU that has it).
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--precision", "fp32", "--quiet"]
int8_ops = pytest.mark.skipif(not (private_ops.cpu_prepack_available() and hasattr(torch.ops.onednn, "qconv_prepack")),
                              reason="this torch has no oneDNN int8 convolution")


def fails(*args, **kwargs):
    raise RuntimeError("this op changed in a newer torch")


def animate_frames(tmp_path, capsys):
    import imageio.v3 as iio

    code, _, err = run_cli(["animate", SOURCE, DRIVING_DIR, "-o", tmp_path / "out/", *MODEL], capsys)
    assert code == 0, err
    frames = np.stack([iio.imread(path) for path in sorted((tmp_path / "out").glob("*.png"))])
    expected = np.load(PARITY / "small-ac.npz")["relative_adapt_prediction"]
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(np.float32) / 255 - expected).max() <= 1 / 255 + 1e-6
    return err


@pytest.fixture
def fresh_notes(monkeypatch):
    monkeypatch.setattr(private_ops, "_notes_given", set())


@pytest.fixture
def int8_split_everywhere(monkeypatch):
    """The int8 split in every residual block, as on a CPU with AMX (the small model's are narrow)."""
    monkeypatch.setattr(inference, "amx_int8_available", lambda: True)
    monkeypatch.setattr(inference, "INT8_SPLIT_MIN_FAN_IN", 0)


def wrong_by_one_percent(original):
    def convolution(*args, **kwargs):
        return original(*args, **kwargs) * 1.01
    return convolution


class WrongByOnePercent:
    """An int8 convolution op packet (the op and its .binary overload) whose results are 1% too large."""

    def __init__(self, packet):
        self.packet = packet
        self.binary = wrong_by_one_percent(packet.binary)

    def __call__(self, *args, **kwargs):
        return self.packet(*args, **kwargs) * 1.01


def int8_split_runs():
    """Whether this torch's int8 ops take the split's calls (their signatures change between releases;
    where they differ, the split falls back, as test_animation_works_when_an_int8_op_breaks shows)."""
    try:
        split = Int8SplitConv(torch.ones(2, 2, 1, 1), None, (0, 0))
        with torch.inference_mode():
            split._fast(torch.ones(1, 2, 3, 3))
        return True
    except Exception:
        return False


@pytest.mark.parametrize("op", ["weight reorder fails", "fused convolution fails", "fused convolution is off"])
def test_animation_works_when_a_prepacking_op_breaks(tmp_path, capsys, monkeypatch, fresh_notes, op):
    if not private_ops.cpu_prepack_available():
        pytest.skip("this torch has no oneDNN")
    if op == "weight reorder fails":
        monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", fails)
    elif op == "fused convolution fails":
        monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", fails)
    else:
        monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise",
                            wrong_by_one_percent(torch.ops.mkldnn._convolution_pointwise))
    err = animate_frames(tmp_path, capsys)
    notes = [line for line in err.splitlines() if line.startswith("fom: note:")]
    assert len(notes) == 1 and "prepacked convolution" in notes[0] and "plain PyTorch" in notes[0], err
    assert ("differs from plain PyTorch by 1.0e-02" in notes[0]) == (op == "fused convolution is off")


@int8_ops
@pytest.mark.parametrize("op", ["int8 weight packing fails", "int8 convolution fails"])
def test_animation_works_when_an_int8_op_breaks(tmp_path, capsys, monkeypatch, fresh_notes, int8_split_everywhere,
                                                op):
    if op == "int8 weight packing fails":
        monkeypatch.setattr(torch.ops.onednn, "qconv_prepack", fails)
    else:
        monkeypatch.setattr(torch.ops.onednn, "qconv2d_pointwise", fails)
    err = animate_frames(tmp_path, capsys)
    notes = [line for line in err.splitlines() if line.startswith("fom: note:")]
    assert len(notes) == 1 and "int8 split" in notes[0] and "RuntimeError" not in err.replace(notes[0], ""), err


@int8_ops
def test_an_int8_split_that_is_off_falls_back_to_plain_convolutions(fresh_notes, capsys, monkeypatch):
    if not int8_split_runs():
        pytest.skip("this torch's int8 ops take other arguments")
    monkeypatch.setattr(torch.ops.onednn, "qconv2d_pointwise", WrongByOnePercent(torch.ops.onednn.qconv2d_pointwise))
    torch.manual_seed(0)
    weight, bias = torch.randn(16, 16, 3, 3) / 12, torch.randn(16)
    split = Int8SplitConv(weight, bias, (1, 1), relu=False)
    x = torch.rand(2, 16, 12, 12)
    with torch.inference_mode():
        expected = torch.nn.functional.conv2d(x, weight, bias, padding=1)
        assert (split(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert split.packed == []  # plain convolutions from now on
        assert (split(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert "int8 split convolution (private oneDNN ops) differs from plain PyTorch" in capsys.readouterr().err


@int8_ops
def test_the_int8_split_scales_each_sample_on_its_own():
    """A dark frame next to a bright one: each sample's fixed point is its own, so its result does not
    depend on the batch (with one scale per batch, the dark frame would lose ten bits of precision)."""
    if not int8_split_runs():
        pytest.skip("this torch's int8 ops take other arguments")
    torch.manual_seed(0)
    split = Int8SplitConv(torch.randn(16, 16, 3, 3) / 12, torch.randn(16) * 0.1, (1, 1), relu=True)
    x = torch.randn(3, 16, 12, 12)
    x[1] *= 1e-3
    x[2] = x[2].relu()  # no shift for this one, shifts for the others
    with torch.inference_mode():
        batch = split._fast(x)
        for i in range(3):
            assert torch.equal(batch[i], split._fast(x[i:i + 1])[0])


def test_the_opt_out_uses_no_private_op(tmp_path, capsys, monkeypatch, fresh_notes):
    monkeypatch.setenv("FOM_NO_PRIVATE_OPS", "1")
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", fails)
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", fails)
    err = animate_frames(tmp_path, capsys)
    assert "note" not in err  # never even tried
    from fom_cli.families import load_networks
    from fom_cli.config import load_config

    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG))
    kp_detector, generator = networks.kp_detector, networks.generator
    convolutions = [module for network in (kp_detector, generator) for module in network.modules()
                    if isinstance(module, Conv)]
    assert convolutions and all(module.packed is None for module in convolutions)


def test_the_opt_out_keeps_a_convolution_plain_whoever_prepacks_it(monkeypatch):
    """FOM_NO_PRIVATE_OPS=1 is honoured by Conv.prepack itself, so TPSMM's rewrites (which prepack
    their own choice of convolutions) leave the private ops out too."""
    conv = Conv.like(torch.nn.Conv2d(8, 8, 3, padding=1))
    monkeypatch.setenv("FOM_NO_PRIVATE_OPS", "1")
    conv.prepack()
    assert conv.packed is None
    if private_ops.cpu_prepack_available():
        monkeypatch.delenv("FOM_NO_PRIVATE_OPS")
        conv.prepack()
        assert conv.packed is not None
