"""Keypoints drawn on frames, for `fom animate --side-by-side` and the training visualisations."""

import colorsys

import numpy as np


def keypoint_colours(num_kp):
    """A rainbow from red to magenta (like the original's gist_rainbow), one colour per keypoint."""
    return [colorsys.hsv_to_rgb(0.83 * i / max(1, num_kp - 1), 1.0, 1.0) for i in range(num_kp)]


def draw_keypoints(image, keypoints, radius=None):
    """(H, W, 3) float image with a filled disc at every keypoint ((K, 2) values in [-1, 1], x then y)."""
    from skimage.draw import disk

    image = np.array(image, dtype=np.float32, copy=True)
    height, width = image.shape[:2]
    radius = radius or max(2, height // 64)
    for (x, y), colour in zip(keypoints, keypoint_colours(len(keypoints))):
        centre = ((y + 1) / 2 * (height - 1), (x + 1) / 2 * (width - 1))
        rows, cols = disk(centre, radius, shape=(height, width))
        image[rows, cols] = colour
    return image


def side_by_side(source, driving, prediction, keypoints):
    """--side-by-side's row: source | driving | result, each with its keypoints ({'source', 'driving', 'moved'})."""
    return np.concatenate([draw_keypoints(source, keypoints["source"]),
                           draw_keypoints(driving, keypoints["driving"]),
                           draw_keypoints(prediction, keypoints["moved"])], axis=1)
