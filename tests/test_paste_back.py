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
