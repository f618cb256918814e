"""Training data: the original FOMM layouts, augmentation, reproducible sampling, bad videos."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fom_cli.errors import BadConfig, BadInput, FomError
from fom_cli.training import synth
from fom_cli.training.data import DatasetRepeater, FramesDataset, UnreadableVideoWarning

SIZE = 32
SHAPE = (SIZE, SIZE, 3)
VOX_AUGMENTATION = {"flip_param": {"horizontal_flip": True, "time_flip": True},
                    "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}}
MGIF_AUGMENTATION = {"flip_param": {"horizontal_flip": True, "time_flip": True},
                     "crop_param": {"size": [SIZE, SIZE]}, "resize_param": {"ratio": [0.9, 1.1]},
                     "jitter_param": {"hue": 0.5}}


def cartoon(seed, frames=4, size=SIZE):
    rng = np.random.default_rng(seed)
    return synth.render_video(synth.sample_identity(rng), synth.sample_motion(rng, frames), size)


def save(video, path):
    """Write a (T, H, W, 3) uint8 video in the layout its path says: folder, strip, or video file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == "":
        path.mkdir()
        for t, frame in enumerate(video):
            iio.imwrite(path / f"{t:07d}.png", frame)
    elif path.suffix == ".png":
        iio.imwrite(path, np.concatenate(list(video), axis=1))
    elif path.suffix == ".gif":
        iio.imwrite(path, video, duration=40, loop=0)
    else:
        iio.imwrite(path, video, fps=25)


def numbered_video(frames=8):
    """Frame t is a flat gray of brightness 30 * t: shows which frames a sample took, in which order."""
    return np.stack([np.full((SIZE, SIZE, 3), 30 * t, np.uint8) for t in range(frames)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """root/train with 3 identities (id1 has two clips), root/test with one video; frame folders."""
    root = tmp_path_factory.mktemp("folders")
    for seed, name in enumerate(["id1#000", "id1#001", "id2#000", "id3#000"]):
        save(cartoon(seed, frames=6), root / "train" / name)
    save(cartoon(9, frames=5), root / "test" / "id9#000")
    return root


@pytest.mark.parametrize("name", ["clip", "clip.png", "clip.gif", "clip.mp4"])
def test_every_layout_gives_training_pairs(tmp_path, name):
    save(cartoon(0), tmp_path / "train" / name)
    (tmp_path / "test").mkdir()
    item = FramesDataset(tmp_path, frame_shape=SHAPE)[0]
    assert item["name"] == name
    for key in ("source", "driving"):
        assert item[key].shape == (3, SIZE, SIZE) and item[key].dtype == np.float32
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0


@pytest.mark.parametrize("name", ["clip", "clip.png", "clip.gif", "clip.mp4"])
def test_every_layout_gives_whole_test_videos(tmp_path, name):
    video = cartoon(1, frames=5)
    save(video, tmp_path / "test" / name)
    save(video, tmp_path / "train" / name)
    item = FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)[0]
    assert item["video"].shape == (3, 5, SIZE, SIZE) and item["video"].dtype == np.float32
    expected = video.transpose(3, 0, 1, 2) / 255
    # PNG is lossless; GIF (256 colours) and MP4 (lossy) come close.
    tolerance = 1e-6 if name in ("clip", "clip.png") else 0.1
    assert np.abs(item["video"] - expected).mean() < tolerance


@pytest.mark.parametrize("name", ["clip", "clip.png", "clip.mp4"])
def test_frames_are_resized_to_frame_shape(tmp_path, name):
    save(cartoon(2), tmp_path / "train" / name)
    dataset = FramesDataset(tmp_path, frame_shape=(48, 48, 3))
    assert dataset[0]["source"].shape == (3, 48, 48)


def test_frame_folders_resize_to_any_shape(folders):
    assert FramesDataset(folders, frame_shape=(24, 40, 3))[0]["driving"].shape == (3, 24, 40)


def test_pairs_come_from_one_video_in_time_order(tmp_path):
    save(numbered_video(), tmp_path / "train" / "counting")
    dataset = FramesDataset(tmp_path, frame_shape=SHAPE)
    for repeat in range(10):
        item = dataset.get(0, repeat=repeat)
        assert item["source"].mean() <= item["driving"].mean()


def test_same_seed_same_samples_and_epochs_differ(folders):
    first = FramesDataset(folders, frame_shape=SHAPE, random_seed=3, augmentation_params=VOX_AUGMENTATION)
    second = FramesDataset(folders, frame_shape=SHAPE, random_seed=3, augmentation_params=VOX_AUGMENTATION)
    for index in range(len(first)):
        assert np.array_equal(first[index]["source"], second[index]["source"])
    epoch0 = [first[index]["driving"] for index in range(len(first))]
    first.set_epoch(1)
    epoch1 = [first[index]["driving"] for index in range(len(first))]
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1))


def test_dataloader_workers_give_the_same_batches(folders):
    dataset = DatasetRepeater(FramesDataset(folders, frame_shape=SHAPE, augmentation_params=VOX_AUGMENTATION), 2)
    dataset.set_epoch(4)

    def batches(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)
        return [batch["driving"] for batch in loader]

    in_process, from_workers = batches(0), batches(2)
    assert len(in_process) == len(from_workers) == 3
    for one, other in zip(in_process, from_workers):
        assert torch.equal(one, other)


def test_id_sampling_indexes_identities(folders):
    dataset = FramesDataset(folders, frame_shape=SHAPE, id_sampling=True)
    assert len(dataset) == 3
    clips = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        clips.add(dataset[0]["name"])
        assert dataset[1]["name"] == "id2#000"
    assert clips == {"id1#000", "id1#001"}


def test_repeater_length_and_fresh_draws(folders):
    dataset = FramesDataset(folders, frame_shape=SHAPE)
    repeated = DatasetRepeater(dataset, num_repeats=5)
    assert len(repeated) == 5 * len(dataset)
    assert repeated[len(dataset) + 2]["name"] == dataset[2]["name"]
    draws = {repeated[repeat * len(dataset)]["source"].tobytes() for repeat in range(5)}
    assert len(draws) > 1
    with pytest.raises(IndexError):
        repeated[len(repeated)]
    with pytest.raises(BadConfig):
        DatasetRepeater(dataset, num_repeats=0)


@pytest.mark.parametrize("params", [VOX_AUGMENTATION, MGIF_AUGMENTATION,
                                    {"rotation_param": {"degrees": 30}},
                                    {"rotation_param": {"degrees": [-10, 20]}},
                                    {"flip_param": {"horizontal_flip": True}},
                                    {"jitter_param": {"saturation": 0.5}}],
                         ids=["vox", "mgif", "rotation", "rotation_range", "horizontal_flip", "saturation"])
def test_augmentation_changes_frames_deterministically(folders, params):
    plain = FramesDataset(folders, frame_shape=SHAPE, random_seed=1)
    augmented = FramesDataset(folders, frame_shape=SHAPE, random_seed=1, augmentation_params=params)
    again = FramesDataset(folders, frame_shape=SHAPE, random_seed=1, augmentation_params=params)
    changed = False
    for index in range(len(plain)):
        item = augmented[index]
        for key in ("source", "driving"):
            assert item[key].shape == (3, SIZE, SIZE) and item[key].dtype == np.float32
            assert 0.0 <= item[key].min() and item[key].max() <= 1.0
            assert np.array_equal(item[key], again[index][key])
            changed |= not np.array_equal(item[key], plain[index][key])
    assert changed


def test_horizontal_flip_mirrors_both_frames(folders):
    plain = FramesDataset(folders, frame_shape=SHAPE)
    flipping = FramesDataset(folders, frame_shape=SHAPE,
                             augmentation_params={"flip_param": {"horizontal_flip": True}})
    flipped = [index for index in range(len(plain))
               if np.array_equal(flipping[index]["source"], plain[index]["source"][:, :, ::-1])]
    assert flipped   # about half of them
    for index in flipped:
        assert np.array_equal(flipping[index]["driving"], plain[index]["driving"][:, :, ::-1])


@pytest.mark.parametrize("params, key", [
    ({"scale_param": {}}, "scale_param"),
    ({"flip_param": {"vertical_flip": True}}, "vertical_flip"),
    ({"jitter_param": {"gamma": 0.1}}, "gamma"),
])
def test_unknown_augmentation_keys_are_named(folders, params, key):
    with pytest.raises(BadConfig, match=key):
        FramesDataset(folders, frame_shape=SHAPE, augmentation_params=params)


@pytest.mark.parametrize("params", [{"jitter_param": {"hue": 0.9}}, {"crop_param": {"size": "big"}},
                                    {"resize_param": {"ratio": [0.9, 1.1]}}])
def test_bad_augmentation_values(folders, params):
    with pytest.raises(BadConfig):
        FramesDataset(folders, frame_shape=SHAPE, augmentation_params=params)


def test_corrupt_video_is_skipped_with_one_warning(tmp_path):
    save(cartoon(0), tmp_path / "train" / "good.gif")
    (tmp_path / "train" / "x.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    dataset = FramesDataset(tmp_path, frame_shape=SHAPE)
    assert dataset.videos == ["good.gif", "x.mp4"]
    with pytest.warns(UnreadableVideoWarning, match="x.mp4") as caught:
        items = [dataset[1], dataset[1], dataset[0]]
    assert len([w for w in caught if w.category is UnreadableVideoWarning]) == 1
    assert all(item["name"] == "good.gif" for item in items)


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.mp4").write_bytes(b"not a video")
    with pytest.warns(UnreadableVideoWarning), pytest.raises(BadInput, match="can be read"):
        FramesDataset(tmp_path, frame_shape=SHAPE)[0]


def test_a_root_without_splits_is_all_training_data(tmp_path):
    save(cartoon(0), tmp_path / "a.gif")
    assert len(FramesDataset(tmp_path, frame_shape=SHAPE)) == 1
    with pytest.raises(BadInput, match="no test/ folder"):
        FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)


def test_missing_and_empty_directories_are_errors(tmp_path):
    with pytest.raises(FomError, match="does not exist"):
        FramesDataset(tmp_path / "nowhere")
    with pytest.raises(FomError, match="no videos"):
        FramesDataset(tmp_path)
    (tmp_path / "test").mkdir()
    with pytest.raises(FomError, match="no train/ folder"):
        FramesDataset(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("not a video")
    with pytest.raises(FomError, match="no videos"):
        FramesDataset(tmp_path)
