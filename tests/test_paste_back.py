"""Animating faces inside a larger photo: feathered masks, paste-back, the streamed driving-face
follower, and `fom animate --crop-source/--crop-driving/--paste-back/--face` on real photos and video."""

import numpy as np
from skimage import data

from fom_cli.compositing import Window, feathered_mask, paste_back


# --- masks and paste-back (pure functions) ------------------------------------------------------------

def test_feathered_mask_fades_to_zero_at_the_border_without_a_step():
    side = 200
    mask = feathered_mask(side, feather=0.15)
    assert mask.shape == (side, side)
    assert mask[side // 2, side // 2] == 1.0
    # The outermost ring is 0: the window's edge cannot show.
    assert (mask[0] == 0).all() and (mask[-1] == 0).all() and (mask[:, 0] == 0).all() and (mask[:, -1] == 0).all()
    # No hard edge anywhere: neighbours differ by little more than an even ramp over 30 px would.
    largest_step = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert largest_step < 1.5 / (0.15 * side)
    # The ramp rises monotonically from the border to the middle.
    row = mask[side // 2, : side // 2]
    assert (np.diff(row) >= 0).all()


def test_paste_back_changes_only_the_window():
    photo = data.astronaut()  # 512x512
    face = np.zeros((64, 64, 3), dtype=np.float32)
    face[..., 1] = 1.0  # pure green: everything it touches changes
    window = Window(left=150, top=40, side=140)
    result = paste_back(photo, face, window, feathered_mask(window.side))
    outside = np.ones(photo.shape[:2], dtype=bool)
    outside[40:180, 150:290] = False
    assert (result[outside] == photo[outside]).all()
    assert result.dtype == np.uint8 and result.shape == photo.shape
    assert (result[110, 220] == (0, 255, 0)).all()  # the middle is the pasted face
    assert (photo == data.astronaut()).all(), "the photo itself is left alone"


def test_paste_back_clips_a_window_reaching_past_the_photo():
    photo = np.full((100, 120, 3), 90, dtype=np.uint8)
    face = np.ones((32, 32, 3), dtype=np.float32)
    window = Window(left=80, top=-30, side=80)  # reaches past the right and top edges
    result = paste_back(photo, face, window, feathered_mask(window.side))
    assert result.shape == photo.shape
    assert (result[50:] == 90).all() and (result[:, :80] == 90).all()
    assert result[10, 118, 0] > 90  # the visible part of the window holds the face


# --- fom animate with face cropping, on real photos, with the fixture model --------------------------

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import imageio.v3 as iio  # noqa: E402
import matplotlib  # noqa: E402
import pytest  # noqa: E402

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, carphone_path, make_clip, run_cli  # noqa: E402
from fom_cli.face_animation import bounded_photo  # noqa: E402

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
DRIVING_DIR = PARITY / "small-driving"  # 8 frames, 128x128
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]

# Where the photos sit in the scenes below, and their faces (dlib's boxes in the photos, from test_crop).
ASTRONAUT_AT = (60, 300)  # top, left in the one-face scene
ASTRONAUT_FACE = (175, 66, 272, 170)


def background(height, width):
    """A textured background (a smooth gradient with a pattern): no face, and every pixel distinct enough
    that a stray paste would show."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // width), (y * 255 // height), ((x // 16 + y // 16) % 2) * 120 + 60],
                    axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scenes")
    one = background(640, 900)
    top, left = ASTRONAUT_AT
    one[top:top + 512, left:left + 512] = data.astronaut()
    iio.imwrite(directory / "one.png", one)
    two = background(620, 1140)
    two[10:610, 10:522] = iio.imread(GRACE_HOPPER)
    two[54:566, 590:1102] = data.astronaut()
    iio.imwrite(directory / "two.png", two)
    iio.imwrite(directory / "coffee.png", data.coffee())
    return directory


def read_frames(directory):
    paths = sorted(Path(directory).glob("*.png"))
    return np.stack([iio.imread(path) for path in paths])


def changed_box(frames, photo):
    """(left, top, right, bottom) of the pixels that differ from the photo in any frame, or None."""
    changed = (frames != photo[None]).any(axis=(0, 3))
    rows, columns = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return columns[0], rows[0], columns[-1] + 1, rows[-1] + 1


def test_paste_back_keeps_the_photo_and_animates_the_face(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "out/", *MODEL,
                            "--paste-back"], capsys)
    assert code == 0, err
    photo = iio.imread(scenes / "one.png")
    frames = read_frames(tmp_path / "out")
    assert frames.shape == (8,) + photo.shape  # the photo's size, not the model's 128x128
    # Everything that changed lies in the window around the astronaut's face (its box grown by --increase's
    # 10% a side, and a pixel of rounding); every other pixel is the photo's own, in every frame.
    top, left = ASTRONAUT_AT
    face_left, face_top, face_right, face_bottom = ASTRONAUT_FACE
    margin = 0.1 * max(face_right - face_left, face_bottom - face_top) + 2
    box = changed_box(frames, photo)
    assert box is not None
    assert box[0] >= left + face_left - margin and box[2] <= left + face_right + margin
    assert box[1] >= top + face_top - margin and box[3] <= top + face_bottom + margin
    # ...and covers most of that window: the face itself was animated.
    assert box[2] - box[0] > 0.8 * (face_right - face_left)
    # Inside the window the face changes over time.
    inside = frames[:, box[1]:box[3], box[0]:box[2]].astype(np.float32)
    assert np.abs(inside[1:] - inside[:1]).mean(axis=(1, 2, 3)).max() > 1.0


def test_all_faces_animates_both_and_max_size_bounds_the_output(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "two.png", DRIVING_DIR, "-o", tmp_path / "out/", *MODEL,
                            "--paste-back", "--all-faces", "--max-size", "570"], capsys)
    assert code == 0, err
    photo = bounded_photo(iio.imread(scenes / "two.png"), 570)
    assert photo.shape == (310, 570, 3)
    frames = read_frames(tmp_path / "out")
    assert frames.shape == (8, 310, 570, 3)
    changed = (frames != photo[None]).any(axis=(0, 3))
    # Two separate patches of change, one on each face; the strip between the photos and the borders kept.
    assert changed[:, :255].any() and changed[:, 300:].any()
    assert not changed[:, 258:298].any()
    assert not changed[:, :4].any() and not changed[:, -4:].any() and not changed[-4:].any()
    for half in (changed[:, :258], changed[:, 298:]):
        assert 0.01 < half.mean() < 0.25  # a face's window, not the whole photo


def test_crop_source_alone_animates_the_square_of_the_face(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "out/", *MODEL,
                            "--crop-source", "--side-by-side"], capsys)
    assert code == 0, err
    frames = read_frames(tmp_path / "out")
    assert frames.shape == (8, 128, 3 * 128, 3)  # source square | driving | result


@pytest.mark.parametrize("options", [["--paste-back"], ["--crop-source"], ["--all-faces", "--paste-back"]])
def test_a_photo_without_a_face_is_one_line_and_writes_nothing(scenes, tmp_path, capsys, options):
    code, out, err = run_cli(["animate", scenes / "coffee.png", DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL,
                              *options], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("fom: error: no face found in the source"), err
    assert not (tmp_path / "out.mp4").exists() and list(tmp_path.iterdir()) == []


def test_all_faces_needs_paste_back(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "two.png", DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL,
                            "--all-faces"], capsys)
    assert code == 2 and "--paste-back" in err and len(err.strip().splitlines()) == 1
