"""Every output says that it is synthetic (media/marks.py): read back with the ffmpeg imageio-ffmpeg ships
and with Pillow; --no-mark leaves it out; --visible-mark changes only its corner; fom inspect reads it."""

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from fom_cli.media.marks import DIGITAL_SOURCE_TYPE, VisibleMark

SAMPLES = Path(__file__).resolve().parent.parent / "fom_cli" / "samples"
SOURCE, DRIVING = SAMPLES / "toon-1.png", SAMPLES / "drive-talk.mp4"


@pytest.fixture(scope="module")
def model():
    import fom_cli as fom

    return fom.load_model(None, device="cpu", precision="fp32")


def container_tags(path):
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                            capture_output=True, text=True, check=True)
    return {key.lower(): value for key, value in
            (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and not line.startswith(";"))}


@pytest.mark.parametrize("name", ["out.mp4", "out.mov", "out.mkv", "out.webm", "out.gif", "frames"])
def test_every_output_kind_says_it_is_synthetic_and_names_tool_model_and_source(model, tmp_path, name):
    import fom_cli as fom

    output = fom.animate(model, SOURCE, DRIVING, tmp_path / name, duration=0.2)
    if name == "frames":
        pngs = sorted(output.glob("*.png"))
        assert len(pngs) == 5
        for png in pngs:
            info = Image.open(png).info
            assert f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"' in info["XML:com.adobe.xmp"]
            assert info["Software"].startswith("fom ") and "toon-1.png" in info["Comment"]
        said = json.loads(info["Comment"][info["Comment"].index("{"):])
    elif name == "out.gif":
        comment = Image.open(output).info["comment"].decode()
        assert DIGITAL_SOURCE_TYPE in comment
        said = json.loads(comment[comment.index("{"):])
        assert Image.open(output).n_frames == 5   # still a whole GIF
    else:
        said = container_tags(output)
        assert said["digital_source_type"] == DIGITAL_SOURCE_TYPE
        assert DIGITAL_SOURCE_TYPE in said["comment"]
    assert said["source_image"] == "toon-1.png"
    assert said["model"].startswith("toon-128.pth (sha256 ") and said["tool"].startswith("fom ")


def test_no_mark_leaves_the_label_out_and_says_so_once(tmp_path, capsys):
    code, out, err = run_cli(["animate", SOURCE, DRIVING, "-o", tmp_path / "out.mp4", "--duration", "0.2",
                              "--no-mark", "--quiet"], capsys)
    assert code == 0, err
    assert "digital_source_type" not in container_tags(tmp_path / "out.mp4")
    assert DIGITAL_SOURCE_TYPE not in container_tags(tmp_path / "out.mp4").get("comment", "")
    assert err.count("--no-mark") == 1 and "no label" in err
    code, out, err = run_cli(["inspect", tmp_path / "out.mp4", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"file": str(tmp_path / "out.mp4"), "synthetic": False, "label": None,
                                             "content_credentials": None}


def test_the_visible_mark_changes_only_its_corner(model):
    plain = model.animate(SOURCE, DRIVING, duration=0.2)
    marked = model.animate(SOURCE, DRIVING, duration=0.2, visible_mark="AI-generated")
    height, width = plain.shape[1:3]
    label = VisibleMark("AI-generated", (height, width))
    left, top, right, bottom = label.box
    assert label.corner == "bottom right" and right <= width and bottom <= height
    assert right - left < 0.6 * width and bottom - top < height / 6   # small (10-pixel text at least)
    changed = np.any(marked != plain, axis=(0, 3))
    rows, columns = np.nonzero(changed)
    assert len(rows) > 0.2 * (right - left) * (bottom - top)   # legible: a good part of its box differs
    assert rows.min() >= top and rows.max() < bottom and columns.min() >= left and columns.max() < right


def test_the_visible_mark_keeps_clear_of_faces_pasted_back():
    face_bottom_right = (60, 60, 128, 128)   # (left, top, right, bottom) in a 128 x 128 photo
    label = VisibleMark("AI-generated", (128, 128), avoid=[face_bottom_right])
    assert label.corner != "bottom right"
    left, top, right, bottom = label.box
    assert right <= 60 or bottom <= 60


def test_inspect_reads_the_label_of_each_kind(model, tmp_path, capsys):
    import fom_cli as fom

    for name in ("a.mp4", "b.gif", "c"):
        fom.animate(model, SOURCE, DRIVING, tmp_path / name, duration=0.2)
    code, out, err = run_cli(["inspect", tmp_path / "a.mp4", tmp_path / "b.gif", tmp_path / "c" / "000000.png",
                              "--json"], capsys)
    assert code == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [report["synthetic"] for report in reports] == [True, True, True]
    assert {report["label"]["source_image"] for report in reports} == {"toon-1.png"}
    code, out, err = run_cli(["inspect", SOURCE], capsys)   # a photo nobody labelled
    assert code == 0 and "no synthetic-media label" in out
    code, out, err = run_cli(["inspect", tmp_path / "missing.mp4"], capsys)
    assert code == 2 and "not a file" in err
