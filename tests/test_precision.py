"""--precision auto (the default) and what reduced precision costs in quality (runtime.choose_precision,
blocks.output_head, the animators).

The auto choice depends on the CPU: its detection is mocked here to play each kind of processor. The
fidelity gate runs bf16 for real, on whatever CPU runs the suite (native bf16 or emulated): the bar holds
for both, and for the kernels of other CPUs (.ci/run repeats the parity tests with ONEDNN_MAX_CPU_ISA).
"""

import json

import numpy as np
import pytest
import torch

from conftest import PARITY, SMALL_CONFIG, TPSMM_PARITY, driving_frames, run_cli

# The gate (issue: real time on a CPU): bf16 frames within 8/255 of fp32's on the parity fixtures, and the
# bundled model's evaluate-synth ratio within 2% of fp32's.
MAX_FRAME_DIFFERENCE = 8 / 255
MAX_RATIO_INCREASE = 0.02


@pytest.fixture
def cpu_kind(monkeypatch):
    """Make torch report a CPU with the given bf16/fp16 instructions (and no ONEDNN_MAX_CPU_ISA cap)."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def play(avx512_bf16=False, amx=False, amx_fp16=False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16, raising=False)
    return play


@pytest.mark.parametrize("flags, cap, expected, why", [
    ({"avx512_bf16": True}, None, "bf16", "natively (AVX512-BF16)"),                 # AMD Zen 4, Cooper Lake
    ({"avx512_bf16": True, "amx": True}, None, "bf16", "natively (AMX-BF16)"),       # Sapphire Rapids
    ({"avx512_bf16": True, "amx": True, "amx_fp16": True}, None, "bf16", "AMX-FP16 and AMX-BF16"),  # Granite R.
    ({}, None, "fp32", "no bf16 instructions on this CPU, where bf16 would be slower"),  # AVX2 / AVX-512 only
    ({"avx512_bf16": True, "amx": True}, "AVX2", "fp32", "no bf16 instructions within ONEDNN_MAX_CPU_ISA=AVX2"),
    ({"avx512_bf16": True, "amx": True}, "AVX512_CORE_BF16", "bf16", "natively (AVX512-BF16)"),
    ({"avx512_bf16": True, "amx": True}, "avx512_core_amx", "bf16", "natively (AMX-BF16)"),
])
def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively(cpu_kind, monkeypatch, flags, cap, expected, why):
    from fom_cli.runtime import choose_precision, cpu_precisions

    cpu_kind(**flags)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    precision, reason = choose_precision("auto", "cpu")
    assert precision == expected and reason.startswith("auto: ") and why in reason, reason
    assert cpu_precisions().bf16 == (expected == "bf16")
    # Asked for, a precision is taken as it is, whatever the CPU.
    assert choose_precision("fp32", "cpu") == ("fp32", "asked for")
    assert choose_precision("bf16", "cpu") == ("bf16", "asked for")


def test_auto_on_a_torch_that_does_not_report_the_flags_is_fp32(monkeypatch):
    from fom_cli.runtime import choose_precision

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    precision, reason = choose_precision("auto", "cpu")
    assert precision == "fp32" and "does not report" in reason


def test_auto_on_gpus_is_fp16_and_elsewhere_fp32():
    from fom_cli.runtime import choose_precision

    assert choose_precision("auto", torch.device("cuda"))[0] == "fp16"  # chosen without touching the GPU
    assert choose_precision("auto", "mps")[0] == "fp32"


ANIMATE = ["animate", PARITY / "small-source.png", PARITY / "small-driving", "--checkpoint", PARITY / "small.pth.tar",
           "--config", SMALL_CONFIG]


def test_the_cli_says_what_auto_chose_and_warns_only_where_reduced_precision_is_slow(cpu_kind, tmp_path, capsys):
    cpu_kind(avx512_bf16=True)
    code, _, err = run_cli(ANIMATE + ["-o", tmp_path / "native.mp4"], capsys)
    assert code == 0, err
    assert "note: precision bf16 (auto: this CPU computes bf16 natively (AVX512-BF16)" in err
    assert "slower" not in err

    cpu_kind()  # no bf16 instructions
    code, _, err = run_cli(ANIMATE + ["-o", tmp_path / "auto.mp4"], capsys)
    assert code == 0, err
    assert "note: precision fp32 (auto: no bf16 instructions" in err
    code, _, err = run_cli(ANIMATE + ["-o", tmp_path / "asked.mp4", "--precision", "bf16"], capsys)
    assert code == 0, err
    assert "--precision bf16 runs slower than fp32 on this CPU" in err and "precision bf16 (auto" not in err


def test_bench_reports_the_precision_chosen_why_and_the_cpu(cpu_kind, capsys):
    cpu_kind(avx512_bf16=True)
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--frames", "2", "--repeats", "1",
                              "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["precision"] == "bf16" and "AVX512-BF16" in report["precision_reason"]
    assert report["cpu"]["native_bf16"] and report["cpu"]["name"]
    assert 0 < report["share_of_conv_throughput"] and report["max_abs_difference"] < MAX_FRAME_DIFFERENCE


# --- the fidelity gate ------------------------------------------------------------------------------------

def animate_fixture(networks, mode, precision):
    import imageio.v3 as iio

    frames = driving_frames().astype(np.float32) / 255
    source = iio.imread(PARITY / "small-source.png").astype(np.float32) / 255
    animator = networks.animator(source, mode=mode, precision=precision)
    animator.set_initial_frame(frames[0])
    return animator.animate_all(frames, batch_size=4)


@pytest.mark.parametrize("family, mode", [("fomm", "relative"), ("fomm", "absolute"), ("tpsmm", "relative"),
                                          ("tpsmm", "avd")])
def test_bf16_frames_stay_within_8_of_255_of_fp32_on_the_parity_fixtures(family, mode, small_tpsmm_checkpoint):
    from fom_cli.config import load_config
    from fom_cli.families import load_networks

    if family == "fomm":
        networks = load_networks(PARITY / "small.pth.tar", load_config(SMALL_CONFIG))
    else:
        networks = load_networks(small_tpsmm_checkpoint, load_config(TPSMM_PARITY / "small.yaml"))
    reference = animate_fixture(networks, mode, "fp32")
    bf16 = animate_fixture(networks, mode, "bf16")
    difference = float(np.abs(bf16 - reference).max())
    # Measured (AMD EPYC, native bf16; oneDNN held to AVX2 and to SSE4.1): FOMM 0.23/255, TPSMM 4.4 to 5.5/255.
    assert difference <= MAX_FRAME_DIFFERENCE, f"{family} {mode}: {difference * 255:.2f}/255"
    assert difference > 0  # bf16 really ran


def test_bf16_keeps_the_bundled_models_quality_on_held_out_pairs():
    """evaluate-synth's ratio in bf16 within 2% of fp32's (4 pairs here; 32 in the closing note)."""
    from fom_cli.checkpoint import default_checkpoint
    from fom_cli.evaluation.synthetic import HELD_OUT_SEED, evaluate_pairs
    from fom_cli.families import load_networks

    networks = load_networks(default_checkpoint())
    fp32, _ = evaluate_pairs(networks, 4, 16, HELD_OUT_SEED, precision="fp32")
    bf16, _ = evaluate_pairs(networks, 4, 16, HELD_OUT_SEED, precision="bf16")
    assert bf16["precision"] == "bf16" and bf16["l1"] != fp32["l1"]
    assert bf16["ratio"] <= fp32["ratio"] * (1 + MAX_RATIO_INCREASE), (bf16["ratio"], fp32["ratio"])
