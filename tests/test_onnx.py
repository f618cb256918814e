"""fom export --onnx and the onnxruntime backend: the graphs reproduce fom's torch pipeline.

On the parity fixtures (FOMM in both grid conventions, TPSMM in every mode), on vox-256 and tpsmm-vox-256
with random weights, through a whole `fom animate`, and through the README's example, which runs the
graphs with onnxruntime alone.
"""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import onnx
import pytest
import torch

from conftest import (PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, TPSMM_PARITY, assert_parity, driving_frames, make_clip,
                      run_cli)
from fom_cli.config import load_config
from fom_cli.families import load_networks
from fom_cli.media.video_in import probe
from fom_cli.onnx_backend import OnnxNetworks

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES = Path(__file__).resolve().parent.parent / "fom_cli" / "samples"
# The torch pipeline and onnxruntime compute the same float32 functions with other kernels.
LIMIT = 1e-4
FOMM_MODES = {"relative_adapt": ("relative", True), "relative": ("relative", False), "absolute": ("absolute", True)}
TPSMM_CONFIG = TPSMM_PARITY / "small.yaml"


@pytest.fixture(scope="session")
def fomm_graphs(tmp_path_factory):
    """{align_corners: the small FOMM fixture exported by `fom export --onnx`}."""
    folders = {}
    for align_corners in (True, False):
        folder = tmp_path_factory.mktemp("onnx") / f"small-{align_corners}"
        code = run_cli(["export", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--align-corners",
                        str(align_corners).lower(), "--onnx", folder, "--quiet"])
        assert code == 0
        folders[align_corners] = folder
    return folders


@pytest.fixture(scope="session")
def tpsmm_graphs(small_tpsmm_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tpsmm-onnx") / "graphs"
    assert run_cli(["export", small_tpsmm_checkpoint, "--config", TPSMM_CONFIG, "--onnx", folder, "--quiet"]) == 0
    return folder


def test_export_writes_checked_graphs_and_what_runs_outside_them(fomm_graphs, tpsmm_graphs, small_tpsmm_checkpoint):
    for folder, family, checkpoint, graphs in ((fomm_graphs[True], "fomm", SMALL_CHECKPOINT, 3),
                                               (tpsmm_graphs, "tpsmm", small_tpsmm_checkpoint, 4)):
        description = json.loads((folder / "model.json").read_text())
        assert description["family"] == family
        assert description["checkpoint"]["sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        assert sorted(path.name for path in folder.iterdir()) == sorted(
            ["model.json", *(graph["file"] for graph in description["graphs"].values())])
        assert len(description["graphs"]) == graphs
        for graph in description["graphs"].values():
            onnx.checker.check_model(str(folder / graph["file"]))
            model = onnx.load(str(folder / graph["file"]))
            assert [value.name for value in model.graph.input] == [value["name"] for value in graph["inputs"]]
            assert [value.name for value in model.graph.output] == [value["name"] for value in graph["outputs"]]
        assert description["graphs"]["keypoints"]["inputs"][0]["shape"] == ["N", 3, 128, 128]
        assert "relative" in description["modes"] and "absolute" in description["modes"]
    assert json.loads((fomm_graphs[False] / "model.json").read_text())["align_corners"] is False
    assert json.loads((tpsmm_graphs / "model.json").read_text())["modes"]["splines"]


@pytest.mark.parametrize("align_corners", [True, False], ids=["align_corners_true", "align_corners_false"])
@pytest.mark.parametrize("mode", FOMM_MODES)
def test_fomm_graphs_reproduce_the_torch_pipeline_and_the_original(fomm_graphs, reference, align_corners, mode):
    data = reference[align_corners]
    relative, adapt = FOMM_MODES[mode]
    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), align_corners)
    expected = networks.animator(data["source"], relative, adapt).animate_all(data["driving"], 3)
    # Batches of 3 (the graphs were traced with 2): the batch is dynamic.
    ours = OnnxNetworks(fomm_graphs[align_corners]).animator(data["source"], relative, adapt)
    frames = ours.animate_all(data["driving"], 3)
    assert np.abs(frames - expected).max() <= LIMIT
    assert np.abs(frames - data[f"{mode}_prediction"]).max() <= LIMIT
    assert np.abs(frames[5] - frames[0]).max() > 0.01   # the frames move


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_tpsmm_graphs_reproduce_the_torch_pipeline(tpsmm_graphs, small_tpsmm_checkpoint, mode):
    data = dict(np.load(TPSMM_PARITY / "small.npz"))
    networks = load_networks(small_tpsmm_checkpoint, load_config(TPSMM_CONFIG))
    expected = networks.animator(data["source"], mode).animate_all(data["driving"], 3)
    frames = OnnxNetworks(tpsmm_graphs).animator(data["source"], mode).animate_all(data["driving"], 3)
    assert np.abs(frames - expected).max() <= LIMIT
    assert np.abs(frames[5] - frames[0]).max() > 0.05


def test_tpsmm_avd_graphs_hold_the_torch_pipelines_accuracy(tpsmm_graphs, small_tpsmm_checkpoint, tpsmm_exact):
    """AVD frames of this random-weight model move by 1e-4 for 1e-7 of keypoint rounding (test_tpsmm_parity):
    no float32 pipeline, torch's included, is within 1e-4 of another end to end. So: the AVD graph's
    keypoints and the frame graph on the same keypoints within the limits, and the frames end to end as
    close to float64 as the torch pipeline's must be."""
    data = dict(np.load(TPSMM_PARITY / "small.npz"))
    torch_animator = load_networks(small_tpsmm_checkpoint, load_config(TPSMM_CONFIG)).animator(data["source"], "avd")
    ours = OnnxNetworks(tpsmm_graphs).animator(data["source"], "avd")
    kp_driving = torch_animator.keypoints(data["driving"])
    with torch.inference_mode():
        expected_kp = torch_animator.driving_keypoints(kp_driving["value"])
    assert np.abs(ours.driving_keypoints(kp_driving)["value"].numpy() - expected_kp.numpy()).max() <= 1e-6
    inputs = {name: value.numpy() if torch.is_tensor(value) else value
              for name, value in ours.frame_inputs({"value": expected_kp}).items()}
    frames = ours.networks.run("frame", **ours.source_side, **inputs)["prediction"].transpose(0, 2, 3, 1)
    assert np.abs(frames - torch_animator.animate(data["driving"], kp_driving)).max() <= LIMIT
    end_to_end = ours.animate_all(data["driving"], 3)
    assert_parity(end_to_end, data["avd_prediction"], tpsmm_exact["avd_prediction"], 5e-4, "avd")


@pytest.mark.parametrize("config_name", ["vox-256", "tpsmm-vox-256"])
def test_graphs_of_full_size_models_reproduce_the_torch_pipeline(config_name, tmp_path):
    from fom_cli.commands.bench import onnx_networks, random_networks, random_tps_networks, synthetic_frames
    from fom_cli.families import FAMILIES, Networks

    config = load_config(config_name)
    tpsmm = config_name.startswith("tpsmm")
    kp_detector, generator = (random_tps_networks if tpsmm else random_networks)(config, 1)
    frames = synthetic_frames(2, (256, 256), seed=1)   # the source and one driving frame: the batch is tested above
    ours = onnx_networks(config, kp_detector, generator, torch.device("cpu"), tmp_path / "graphs")
    assert json.loads((tmp_path / "graphs" / "model.json").read_text())["config_name"] == config_name
    onnx_frames = ours.animator(frames[0]).animate_all(frames[1:], 1)
    family = FAMILIES["tpsmm" if tpsmm else "fomm"]
    if tpsmm:
        from fom_cli.animation_tpsmm import optimize_tps_networks

        optimize_tps_networks(kp_detector, generator)
    else:
        from fom_cli.models.inference import optimize_for_inference

        kp_detector, generator = optimize_for_inference(kp_detector), optimize_for_inference(generator)
    expected = Networks(config, kp_detector, generator, family).animator(frames[0]).animate_all(frames[1:], 1)
    assert onnx_frames.shape == expected.shape == (1, 256, 256, 3)
    assert np.abs(onnx_frames - expected).max() <= LIMIT


def test_a_whole_fom_animate_through_onnxruntime_matches_torch_within_one_level(tmp_path, monkeypatch, capsys):
    """The bundled model (it blends the warped source in: frame.onnx takes the source image too), exported
    once into the cache by --backend onnxruntime, against torch in float32, PNG frames."""
    monkeypatch.setenv("FOM_HOME", str(tmp_path / "home"))
    common = [SAMPLES / "toon-1.png", SAMPLES / "drive-talk.mp4", "--duration", "0.4", "--quiet"]
    assert run_cli(["animate", *common, "-o", tmp_path / "torch", "--precision", "fp32"]) == 0
    code, _, err = run_cli(["animate", *common, "-o", tmp_path / "onnx", "--backend", "onnxruntime"], capsys)
    assert code == 0, err
    exported = list((tmp_path / "home" / "onnx").iterdir())
    assert len(exported) == 1 and (exported[0] / "frame.onnx").is_file()
    written = (exported[0] / "frame.onnx").stat().st_mtime_ns
    # The second run finds the cached graphs (and a folder of graphs runs with onnxruntime by default).
    code, _, err = run_cli(["animate", *common, "-o", tmp_path / "onnx2.mp4", "--backend", "onnxruntime"], capsys)
    assert code == 0, err
    assert (exported[0] / "frame.onnx").stat().st_mtime_ns == written
    assert run_cli(["animate", *common, "-o", tmp_path / "onnx3", "--checkpoint", exported[0]]) == 0
    torch_frames = sorted((tmp_path / "torch").glob("*.png"))
    assert len(torch_frames) == 10
    for folder in ("onnx", "onnx3"):
        onnx_frames = sorted((tmp_path / folder).glob("*.png"))
        assert [path.name for path in onnx_frames] == [path.name for path in torch_frames]
        differences = [np.abs(iio.imread(a).astype(int) - iio.imread(b).astype(int)).max()
                       for a, b in zip(onnx_frames, torch_frames)]
        assert max(differences) <= 1
    assert probe(tmp_path / "onnx2.mp4").num_frames == 10


def readme_example():
    """The README's example of running the graphs without fom: the python block after its ONNX heading."""
    text = README.read_text()
    section = text[text.index("## ONNX"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_the_graphs_without_fom(fomm_graphs, tmp_path):
    driving = make_clip(tmp_path / "driving.mp4", driving_frames(), tone=False)
    (tmp_path / "example.py").write_text(readme_example())
    (tmp_path / "frames").mkdir()
    # A fresh interpreter, from a folder where fom_cli cannot be imported from the source tree.
    result = subprocess.run([sys.executable, "-I", "example.py", fomm_graphs[True], PARITY / "small-source.png",
                             driving, "frames"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "import fom" not in readme_example() and len(readme_example().splitlines()) <= 32
    assert run_cli(["animate", PARITY / "small-source.png", driving, "-o", tmp_path / "fom", "--checkpoint",
                    fomm_graphs[True], "--no-adapt-scale", "--quiet"]) == 0
    theirs, ours = sorted((tmp_path / "frames").glob("*.png")), sorted((tmp_path / "fom").glob("*.png"))
    assert len(theirs) == len(ours) == 8
    assert max(np.abs(iio.imread(a).astype(int) - iio.imread(b).astype(int)).max() for a, b in zip(theirs, ours)) <= 1


def test_bench_reports_both_backends_in_one_run(capsys):
    code, out, err = run_cli(["bench", "animate", "--config", SMALL_CONFIG, "--frames", "2", "--repeats", "1",
                              "--backend", "onnxruntime", "--precision", "fp32", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["onnxruntime_fps"] > 0 and report["pipeline_fps"] > 0 and report["straightforward_fps"] > 0
    assert report["onnxruntime_vs_torch"] == pytest.approx(report["onnxruntime_fps"] / report["pipeline_fps"])
    assert report["onnxruntime_max_abs_difference"] <= LIMIT
    assert report["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    placement = report["onnxruntime"]["nodes_per_provider"]
    assert set(placement) == {"keypoints", "source", "frame"}
    assert all(list(counts) == ["CPUExecutionProvider"] and counts["CPUExecutionProvider"] > 10
               for counts in placement.values())


def test_what_the_onnxruntime_backend_cannot_do_is_one_line(fomm_graphs, tmp_path, capsys, monkeypatch):
    source, driving = PARITY / "small-source.png", PARITY / "small-driving"
    cases = [
        (["--checkpoint", fomm_graphs[True], "--precision", "bf16"], "float32"),
        (["--checkpoint", fomm_graphs[True], "--backend", "torch"], "--backend onnxruntime"),
        (["--checkpoint", fomm_graphs[True], "--mode", "avd"], "relative or absolute"),
        (["--checkpoint", fomm_graphs[True], "--compile"], "--compile"),
        (["--checkpoint", fomm_graphs[True], "--config", "vox-256"], "export again"),
    ]
    for options, message in cases:
        code, out, err = run_cli(["animate", source, driving, "-o", tmp_path / "out.mp4", *options], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (options, err)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # as where the extra is not installed
    code, out, err = run_cli(["animate", source, driving, "-o", tmp_path / "out.mp4", "--checkpoint",
                              fomm_graphs[True]], capsys)
    assert code == 2 and "pip install 'fom[onnx]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.mp4").exists()


def test_export_never_writes_into_a_folder_holding_files(fomm_graphs, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    code, out, err = run_cli(["export", SMALL_CHECKPOINT, "--onnx", folder], capsys)
    assert code == 2 and "not an empty folder" in err
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]
    code, out, err = run_cli(["export", SMALL_CHECKPOINT, SMALL_CHECKPOINT, "--onnx", tmp_path / "two"], capsys)
    assert code == 2 and "one checkpoint" in err and not (tmp_path / "two").exists()
    # An empty folder is taken; the summary names what was written.
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["export", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--onnx", tmp_path / "empty"],
                             capsys)
    assert code == 0 and "keypoints.onnx, source.onnx, frame.onnx and model.json" in err
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []   # no temporaries left
