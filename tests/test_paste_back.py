"""Animating faces inside a larger photo: feathered masks, paste-back, the streamed driving-face
follower, and `fom animate --crop-source/--crop-driving/--paste-back/--face` on real photos and video."""

import re

import numpy as np
from skimage import data

from fom_cli.compositing import Window, face_window, feathered_mask, paste_back


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

from pathlib import Path  # noqa: E402

import imageio.v3 as iio  # noqa: E402
import matplotlib  # noqa: E402
import pytest  # noqa: E402

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, carphone_path, make_clip, run_cli  # noqa: E402
from fom_cli import faces  # noqa: E402
from fom_cli.face_animation import bounded_photo  # noqa: E402

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
DRIVING_DIR = PARITY / "small-driving"  # 8 frames, 128x128
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]

# Where the photos sit in the scenes below, and their faces: dlib's boxes in the photos (from test_crop),
# grown as fom's dlib detector grows them to the training data's framing.
ASTRONAUT_AT = (60, 300)  # top, left in the one-face scene
ASTRONAUT_FACE = faces.grown((175, 66, 272, 170), faces.DLIB_TO_WIDER_FACE_SCALE)


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
    # Everything that changed lies in the face window around the astronaut's head (fom crop's window: the
    # head with --increase's margin; a pixel of rounding, as dlib's box may differ by one); every other
    # pixel is the photo's own, in every frame.
    top, left = ASTRONAUT_AT
    face_left, face_top, face_right, face_bottom = ASTRONAUT_FACE
    window = face_window((left + face_left, top + face_top, left + face_right, top + face_bottom), *photo.shape[:2])
    box = changed_box(frames, photo)
    assert box is not None
    assert box[0] >= window.left - 2 and box[2] <= window.left + window.side + 2
    assert box[1] >= window.top - 2 and box[3] <= window.top + window.side + 2
    # ...and covers most of that window: the face itself was animated.
    assert box[2] - box[0] > 0.8 * window.side
    # Inside the window the face changes over time.
    inside = frames[:, box[1]:box[3], box[0]:box[2]].astype(np.float32)
    assert np.abs(inside[1:] - inside[:1]).mean(axis=(1, 2, 3)).max() > 1.0


def test_the_bundled_model_animates_a_cartoon_placed_in_a_larger_scene(tmp_path, capsys):
    """No --checkpoint: the bundled toon model, on a cartoon face (a sample it never trained on) pasted
    into a wider scene, driven by the talking sample."""
    from fom_cli import samples

    toon = iio.imread(Path(samples.__file__).parent / "toon-2.png")[..., :3]
    scene = background(480, 720)
    top, left = 100, 260
    scene[top:top + 256, left:left + 256] = toon
    iio.imwrite(tmp_path / "scene.png", scene)
    driving = Path(samples.__file__).parent / "drive-talk.mp4"
    code, _, err = run_cli(["animate", tmp_path / "scene.png", driving, "-o", tmp_path / "out/", "--paste-back",
                            "--duration", "1", "--quiet"], capsys)
    assert code == 0, err
    frames = read_frames(tmp_path / "out")
    assert frames.shape == (25,) + scene.shape
    # Only the face window around the cartoon's head changed (dlib finds its face in the toon at about
    # (58, 70, 187, 199): the window is about (-2, -9) to (246, 239) of the toon, its head with a margin).
    [face] = faces.make_detector("dlib").detect(scene, max_side=2048)  # as animate looks at a photo
    window = face_window(face.box, *scene.shape[:2])
    box = changed_box(frames, scene)
    assert box is not None
    assert window.left - 4 <= box[0] and box[2] <= window.left + window.side + 4
    assert window.top - 4 <= box[1] and box[3] <= window.top + window.side + 4
    assert box[2] - box[0] > 0.6 * window.side and box[3] - box[1] > 0.6 * window.side
    # Relative motion: the first frame reproduces the photo's face; later ones move away from it.
    inside = frames[:, box[1]:box[3], box[0]:box[2]].astype(np.float32)
    photo_face = scene[box[1]:box[3], box[0]:box[2]].astype(np.float32)
    distance = np.abs(inside - photo_face[None]).mean(axis=(1, 2, 3))
    assert distance[0] < 5.0
    assert distance.max() > 2 * distance[0] + 5.0


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
        # A face's window, not the whole photo: its head with a margin, about half of each photo (a quarter
        # before, when the window cut the head off at the forehead).
        assert 0.01 < half.mean() < 0.65


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


def test_another_fps_keeps_the_duration_with_faces_as_with_whole_frames(scenes, tmp_path, capsys):
    """--paste-back --fps 50 on 25 fps driving frames: each pasted frame shows twice (the face path used to
    write one frame per driving frame, so the video played at double speed and the sound was cut)."""
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "out/", *MODEL,
                            "--paste-back", "--fps", "50"], capsys)
    assert code == 0, err
    frames = read_frames(tmp_path / "out")
    assert len(frames) == 16
    assert all(np.array_equal(frames[i], frames[i + 1]) for i in range(0, 16, 2))
    assert not np.array_equal(frames[1], frames[2])
    driving = make_clip(tmp_path / "drive.mp4", read_frames(DRIVING_DIR), fps=25, tone=True)
    code, _, err = run_cli(["animate", scenes / "one.png", driving, "-o", tmp_path / "out.mp4", *MODEL,
                            "--crop-source", "--fps", "10"], capsys)
    assert code == 0, err
    info = probe(tmp_path / "out.mp4")
    assert info.num_frames == 4 and abs(info.fps - 10) < 1e-3 and info.has_audio  # 8 frames at 25 fps: 0.32 s


def test_find_best_frame_works_with_the_source_face_cropped(scenes, tmp_path, capsys):
    """--find-best-frame with --paste-back: the best frame is found on the face's square (it was ignored)."""
    loud = [option for option in MODEL if option != "--quiet"]
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "found/", *loud,
                            "--paste-back", "--find-best-frame"], capsys)
    assert code == 0, err
    best = int(re.search(r"best frame: (\d+) \(by", err).group(1))
    assert best != 0   # this test tells the found frame from the default only where they differ
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "given/", *MODEL,
                            "--paste-back", "--best-frame", str(best)], capsys)
    assert code == 0, err
    assert np.array_equal(read_frames(tmp_path / "found"), read_frames(tmp_path / "given"))


def test_find_best_frame_with_a_followed_driving_face_is_refused_before_the_model_loads(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "one.png", DRIVING_DIR, "-o", tmp_path / "out.mp4",
                            "--checkpoint", tmp_path / "no-such-checkpoint.pth", "--face", "--find-best-frame"],
                           capsys)
    assert code == 2 and "--find-best-frame" in err and "no-such-checkpoint" not in err, err


def test_all_faces_needs_paste_back(scenes, tmp_path, capsys):
    code, _, err = run_cli(["animate", scenes / "two.png", DRIVING_DIR, "-o", tmp_path / "out.mp4", *MODEL,
                            "--all-faces"], capsys)
    assert code == 2 and "--paste-back" in err and len(err.strip().splitlines()) == 1


# --- the driving face, followed as a stream -------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from fom_cli import faces  # noqa: E402
from fom_cli.face_tracks import DrivingFollower, gaussian_smooth  # noqa: E402
from fom_cli.media.images import resize_uint8  # noqa: E402
from fom_cli.media.video_in import VideoReader, probe  # noqa: E402

CANVAS_WIDTH = 320  # the carphone clip (176x144) slides across a frame this wide
CLIP_FRAMES = 60


@pytest.fixture(scope="module")
def detector():
    return faces.make_detector("dlib")


@pytest.fixture(scope="module")
def moving_face(tmp_path_factory, detector):
    """The carphone talking head sliding left to right across a wider frame: (clip path, true face box of
    every frame or None), the box from the detector on the unshifted frame, moved by the shift."""
    carphone = [frame for _, frame in zip(range(CLIP_FRAMES), VideoReader(carphone_path()).frames())]
    height, width = carphone[0].shape[:2]
    frames, boxes = [], []
    for index, frame in enumerate(carphone):
        shift = round(index * (CANVAS_WIDTH - width) / (CLIP_FRAMES - 1))
        canvas = np.full((height, CANVAS_WIDTH, 3), 40, dtype=np.uint8)
        canvas[:, shift:shift + width] = frame
        frames.append(canvas)
        found = detector.detect(frame)
        if found:
            left, top, right, bottom = found[0].box
            boxes.append((left + shift, top, right + shift, bottom))
        else:
            boxes.append(None)
    path = make_clip(tmp_path_factory.mktemp("moving") / "moving.mp4", np.stack(frames), fps=30, tone=False)
    return path, boxes


def test_streamed_smoothing_equals_smoothing_the_whole_track():
    reader = SimpleNamespace(fps=25.0)
    follower = DrivingFollower(reader, detector=None, increase=0.1, size=64)
    rng = np.random.default_rng(0)
    boxes = [tuple(rng.uniform(0, 100, 2)) + (0.0, 0.0) for _ in range(50)]
    boxes = [(x, y, x + 20 + i % 3, y + 20) for i, (x, y, _, _) in enumerate(boxes)]
    streamed = [track for _frame, track in follower.smoothed((i, box) for i, box in enumerate(boxes))]
    whole = np.array([((l + r) / 2, (t + b) / 2, max(r - l, b - t)) for l, t, r, b in boxes])
    radius = follower.radius  # 3 sigma: 15 frames at 25 fps
    assert radius == 15
    assert np.allclose(streamed[radius:-radius], gaussian_smooth(whole, 0.2 * 25.0)[radius:-radius])
    # At the ends the Gaussian is cut to equal reach on both sides: the first and last frames unsmoothed.
    assert np.allclose(streamed[0], whole[0]) and np.allclose(streamed[-1], whole[-1])
    # A steady motion is followed exactly, also at the ends (no lag toward where the face was).
    steady = [(i, (3.0 * i, 10.0, 3.0 * i + 40, 50.0)) for i in range(40)]
    followed = np.array([track for _frame, track in follower.smoothed(steady)])
    assert np.allclose(followed[:, 0], 3.0 * np.arange(40) + 20)
    # ...and the frames come out in order, each with its own track.
    assert [frame for frame, _ in follower.smoothed((i, box) for i, box in enumerate(boxes))] == list(range(50))


def test_the_driving_window_follows_the_moving_face(moving_face, detector):
    """The follower's window of every frame is near the face window of the face's true box there (fom
    crop's window; detections come every 3 frames and are smoothed, dlib's box sizes come in steps)."""
    path, boxes = moving_face
    follower = DrivingFollower(VideoReader(path), detector, increase=0.1, size=128)
    windows = [window for _square, window in follower.crops()]
    assert len(windows) == CLIP_FRAMES
    checked = 0
    for window, box in zip(windows, boxes):
        if box is None:
            continue
        expected = face_window(box, 144, CANVAS_WIDTH)
        offset = (window.left - expected.left + (window.side - expected.side) / 2,
                  window.top - expected.top + (window.side - expected.side) / 2)  # between the centres
        assert np.hypot(*offset) <= 0.1 * window.side
        assert abs(window.side - expected.side) <= 0.2 * expected.side
        checked += 1
    assert checked > 0.8 * CLIP_FRAMES
    assert windows[-1].left - windows[0].left > 100  # it did travel with the face


def test_a_still_driving_face_keeps_a_still_window(detector):
    """dlib's boxes come in steps of about 1.2 times; the near search at a scale set anew from each box
    made a still face's box, and its window, wander from step to step (here, by the previous window rule:
    sides 96 to 103 px, 17 different windows after the first second). At one scale (NEAR_RESCALE) the
    window holds still once the first detections are smoothed over."""
    frame = resize_uint8(data.astronaut(), (384, 384))

    class StillVideo:
        fps, path = 30.0, "still.mp4"

        def frames(self, start=0, stop=None):
            return iter([frame] * 90)

    windows = [window for _square, window in DrivingFollower(StillVideo(), detector, increase=0.1, size=64).crops()]
    settled = windows[30:]  # after the first second
    assert len({window.side for window in settled}) == 1
    assert max(window.left for window in settled) - min(window.left for window in settled) <= 2
    assert max(window.top for window in settled) - min(window.top for window in settled) <= 2


def test_the_follower_searches_the_whole_frame_only_where_the_face_is_not_near(moving_face, detector):
    path, _ = moving_face
    searched = []  # the shape of every image the detector was given

    class Recording:
        def detect(self, image, max_side=None):
            searched.append(image.shape[:2])
            return detector.detect(image, max_side=max_side)

    follower = DrivingFollower(VideoReader(path), Recording(), increase=0.1, size=128)
    windows = [window for _square, window in follower.crops()]
    assert len(windows) == CLIP_FRAMES
    frame_shape = (144, CANVAS_WIDTH)
    whole, near = searched.count(frame_shape), [shape for shape in searched if shape != frame_shape]
    # One whole-frame search finds the face; after that it is found near where it was, in a region
    # smaller than the frame, at every detection (the face is visible throughout).
    assert whole <= 2 and len(near) >= CLIP_FRAMES // follower.detect_every - 1
    assert all(shape[1] < CANVAS_WIDTH for shape in near)


def test_face_preset_end_to_end(scenes, moving_face, tmp_path, capsys):
    path, _ = moving_face
    code, _, err = run_cli(["animate", scenes / "one.png", path, "-o", tmp_path / "out/", *MODEL, "--face",
                            "--duration", "0.5"], capsys)
    assert code == 0, err
    photo = iio.imread(scenes / "one.png")
    frames = read_frames(tmp_path / "out")
    assert frames.shape == (15,) + photo.shape
    top, left = ASTRONAUT_AT
    box = changed_box(frames, photo)
    assert box is not None and left + 100 < box[0] and box[2] < left + 350 and top < box[1] and box[3] < top + 250


def test_side_by_side_shows_the_driving_crop(moving_face, scenes, tmp_path, capsys, detector):
    path, _ = moving_face
    code, _, err = run_cli(["animate", scenes / "one.png", path, "-o", tmp_path / "out/", *MODEL,
                            "--crop-driving", "--crop-source", "--side-by-side", "--duration", "0.2"], capsys)
    assert code == 0, err
    frames = read_frames(tmp_path / "out")
    assert frames.shape[1:] == (128, 3 * 128, 3)
    # The middle panel is the driving square the model saw: the follower's square of the face (the whole
    # head, too small now for dlib to find behind the keypoints drawn on it), up to those keypoints.
    follower = DrivingFollower(VideoReader(path), detector, increase=0.1, size=128)
    squares = [square for square, _window in follower.crops(0, len(frames))]  # the same frames, as animate
    assert len(squares) == len(frames)
    for frame, square in zip(frames, squares):
        difference = np.abs(frame[:, 128:256].astype(np.float32) - square * 255).max(axis=-1)
        assert np.median(difference) < 3 and (difference > 30).mean() < 0.05


def test_a_driving_video_without_a_face_is_one_line_and_writes_nothing(scenes, tmp_path, capsys):
    coffee = iio.imread(scenes / "coffee.png")[:256, :320]
    driving = make_clip(tmp_path / "coffee.mp4", np.stack([coffee] * 6), fps=12, tone=False)
    code, _, err = run_cli(["animate", scenes / "one.png", driving, "-o", tmp_path / "out.mp4", *MODEL, "--face"],
                           capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("fom: error: no face found in the driving"), err
    assert not (tmp_path / "out.mp4").exists()


# --- fom batch columns ----------------------------------------------------------------------------------

def test_batch_columns_turn_face_options_on_per_job(scenes, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"source,driving,output,paste_back,max_size\n"
                    f"{scenes / 'one.png'},{DRIVING_DIR},pasted/,true,450\n"
                    f"{scenes / 'one.png'},{DRIVING_DIR},plain/,,\n")
    code, _, err = run_cli(["batch", jobs, *MODEL], capsys)
    assert code == 0, err
    pasted, plain = read_frames(tmp_path / "pasted"), read_frames(tmp_path / "plain")
    assert pasted.shape == (8, 320, 450, 3)  # the photo, bounded by the job's max_size
    assert plain.shape == (8, 128, 128, 3)  # the whole photo fitted to the model's frame, as before
    photo = bounded_photo(iio.imread(scenes / "one.png"), 450)
    changed = (pasted != photo[None]).any(axis=(0, 3))
    assert changed.any() and changed.mean() < 0.1
