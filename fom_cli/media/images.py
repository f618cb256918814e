"""Pictures in and out, and fom's resize (one filter: float for model inputs, 8-bit for crops).

Images come back as float32 HxWx3 RGB in [0, 1] (`read_image`): grayscale is copied to three channels,
16-bit pictures keep their precision and transparency is composited over white. `fit_frame` brings any
picture to the model's input size. `frame_files` lists a folder's images in frame order: the one
frame order of fom, used by animation (frame folders as driving videos) and training alike.
"""

import os
import re
import warnings

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from fom_cli.errors import BadInput, first_line
from fom_cli.media.files import write_bytes_with

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image(path) -> np.ndarray:
    """Read a picture as float32 HxWx3 RGB in [0, 1].

    8-bit pictures become exactly `pixels.astype(np.float32) / 255` (the original FOMM demo's values),
    16-bit ones are divided by 65535, grayscale is copied to three channels and transparency is
    composited over white (a cut-out portrait on white looks like a photo; on black it would not).
    """
    path = os.fspath(path)
    check_image_path(path)
    return to_float_rgb(decode_image(path))


def image_size(path):
    """(height, width) of a picture as read_image returns it (EXIF orientation applied), from its header
    alone; None when the header cannot be read (reading the picture then says what is wrong)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            # EXIF orientations 5 to 8 turn the picture by a quarter: decode_image swaps its sides.
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except Exception:  # Pillow raises many kinds of error for a damaged file
        return None
    return height, width


def check_image_path(path):
    extension = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise BadInput(f"image not found: {path}; check the path")
    if os.path.isdir(path):
        raise BadInput(f"{path} is a directory; give an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if extension not in IMAGE_EXTENSIONS:
        raise BadInput(f"unsupported image type '{extension}' for {path}; "
                       f"use one of {', '.join(IMAGE_EXTENSIONS)}")


def decode_image(path) -> np.ndarray:
    """The pixels as stored: uint8 or uint16, with 1 to 4 channels. BadInput if they cannot be read."""
    try:
        if _is_16bit_colour_png(path):
            return _decode_16bit_colour_png(path)
        with iio.imopen(path, "r", plugin="pillow") as image_file:
            pillow_mode = image_file.metadata(index=0)["mode"]
            # Modes Pillow gives us as usable arrays (palette images it expands itself); anything else
            # (CMYK or YCbCr JPEGs, 1-bit images, premultiplied alpha) is converted to plain RGB(A).
            usable_modes = ("L", "LA", "RGB", "RGBA", "P", "I;16", "I;16B", "I;16L", "I")
            convert_to = None
            if pillow_mode not in usable_modes:
                convert_to = "RGBA" if "A" in pillow_mode or "a" in pillow_mode else "RGB"
            # rotate=True applies the EXIF orientation, so phone photos come out the right way up.
            return image_file.read(index=0, mode=convert_to, rotate=True)
    except Exception as error:  # Pillow raises many kinds of error for a damaged file
        raise BadInput(f"could not read {path} as an image ({first_line(error)}); "
                       f"check that the file is a complete, valid image") from None


def _is_16bit_colour_png(path) -> bool:
    """True for 16-bit RGB(A) or gray+alpha PNGs, which Pillow would silently cut down to 8 bits."""
    if os.path.splitext(path)[1].lower() != ".png":
        return False
    with open(path, "rb") as png_file:
        header = png_file.read(26)
    # PNG signature (8 bytes), IHDR chunk length and type (8), width and height (8), bit depth, colour type.
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    bit_depth, colour_type = header[24], header[25]
    gray_alpha, rgb, rgba = 4, 2, 6
    return bit_depth == 16 and colour_type in (gray_alpha, rgb, rgba)


def _decode_16bit_colour_png(path) -> np.ndarray:
    """Let ffmpeg decode the PNG into 16-bit RGBA, keeping every bit."""
    decoder = imageio_ffmpeg.read_frames(path, pix_fmt="rgba64le", bits_per_pixel=64)
    try:
        width, height = next(decoder)["size"]
        pixels = next(decoder)
    finally:
        decoder.close()
    return np.frombuffer(pixels, dtype="<u2").reshape(height, width, 4).astype(np.uint16)


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float pixels with 1-4 channels -> float32 HxWx3 in [0, 1]."""
    if pixels.dtype == np.uint8:
        image = pixels.astype(np.float32) / 255
    elif pixels.dtype == np.bool_:
        image = pixels.astype(np.float32)
    elif np.issubdtype(pixels.dtype, np.integer):
        # 16-bit PNGs; Pillow's 32-bit "I" mode holds 16-bit values too.
        image = np.clip(pixels, 0, 65535).astype(np.float32) / 65535
    else:
        image = pixels.astype(np.float32)

    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels in (2, 4):
        colour, alpha = image[:, :, :-1], image[:, :, -1:]
        image = colour * alpha + (1 - alpha)  # over white
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image, dtype=np.float32)


def check_image_array(array, what="frames"):
    """`array` as numpy, after checking it is what fom takes in memory: RGB (H, W, 3) or (N, H, W, 3), uint8
    or float in [0, 1]. BadInput otherwise (a uint8 photo mistaken for floats would animate garbage)."""
    array = np.asarray(array)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise BadInput(f"{what} must be RGB arrays of shape (H, W, 3) or (N, H, W, 3), not {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInput(f"{what} must be uint8 or float in [0, 1], not {array.dtype}")
    if array.size and not (array.min() >= 0 and array.max() <= 1):   # also catches nan
        raise BadInput(f"{what} are float but not in [0, 1] (from {array.min():g} to {array.max():g}); "
                       "give uint8, or divide by 255")
    return array


def to_uint8(image) -> np.ndarray:
    """Float pixels in [0, 1] (clipped) -> uint8, rounded; uint8 passes through. fom's one conversion."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def to_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    """Pixels of any supported kind -> uint8 HxWx3 RGB, the frame format of this module."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    return to_uint8(to_float_rgb(pixels))



def write_image(path, image, mark=None):
    """Write an image (uint8, or float in [0, 1]) atomically; the format follows the extension. mark: as for
    write_encoded_image (PNG)."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1] or ".png"
    write_bytes_with(path, lambda temporary: write_encoded_image(temporary, image, extension, mark))


def write_encoded_image(path, image, extension=".png", mark=None):
    """Encode an image in memory, then write the file with a plain open(): a failed write (a full disk) is
    one OSError here. Written by imageio, the failing file would be closed again when its plugin is
    collected, and that second error would print a traceback the user has no use for. mark: a function of
    the encoded bytes that adds metadata (marks.SyntheticMedia.png)."""
    encoded = iio.imwrite("<bytes>", to_uint8(image), extension=extension)
    if mark is not None:
        encoded = mark(encoded)
    with open(path, "wb") as file:
        file.write(encoded)


def fit_frame(image, size, mode="crop") -> np.ndarray:
    """Bring `image` (uint8 or float HxWx3) to `size` = (height, width); float32 HxWx3 in [0, 1].

    mode "crop" cuts the centre of the picture to the target shape, then resizes; "pad" resizes the whole
    picture to fit inside and centres it on black; "stretch" resizes ignoring the aspect ratio, as the
    original FOMM demo did. A picture that already has the target size is only converted to float.
    """
    target_height, target_width = int(size[0]), int(size[1])
    image = np.asarray(image)
    height, width = image.shape[:2]

    if mode == "stretch":
        return resize(image, (target_height, target_width))

    if mode == "crop":
        # The largest box of the target's aspect ratio that fits in the picture, centred.
        crop_width = min(width, round(height * target_width / target_height))
        crop_height = min(height, round(width * target_height / target_width))
        top = (height - crop_height) // 2
        left = (width - crop_width) // 2
        return resize(image[top:top + crop_height, left:left + crop_width], (target_height, target_width))

    if mode == "pad":
        scale = min(target_height / height, target_width / width)
        fitted_height = min(target_height, max(1, round(height * scale)))
        fitted_width = min(target_width, max(1, round(width * scale)))
        fitted = resize(image, (fitted_height, fitted_width))
        canvas = np.zeros((target_height, target_width) + fitted.shape[2:], dtype=np.float32)
        top = (target_height - fitted_height) // 2
        left = (target_width - fitted_width) // 2
        canvas[top:top + fitted_height, left:left + fitted_width] = fitted
        return canvas

    raise ValueError(f"fit_frame mode must be 'crop', 'pad' or 'stretch', not {mode!r}")


def resize(image: np.ndarray, size, nearest=False) -> np.ndarray:
    """Bilinear resize to (height, width), anti-aliased when shrinking; float32 HxWx3 in [0, 1]. For model
    inputs and training frames (pictures that stay 8-bit go through resize_uint8, the same filter).
    `nearest` copies the nearest pixel instead (a training augmentation's option).

    torch's anti-aliased bilinear filter (a triangle filter widened by the shrink factor, as PIL's):
    within about 1/255 on average of scikit-image's resize that the original demo used, and far faster,
    which matters when every frame of a long video passes through it.
    """
    if image.shape[:2] == tuple(size):
        return _as_float_image(image)
    import torch  # here, not at the top: `fom --help` and the CLI's parser must not import torch
    import torch.nn.functional as F

    shrinking = size[0] < image.shape[0] or size[1] < image.shape[1]
    pixels = torch.from_numpy(_as_float_image(image)).permute(2, 0, 1).unsqueeze(0)
    size = tuple(int(s) for s in size)
    if nearest:
        resized = F.interpolate(pixels, size=size, mode="nearest-exact")
    else:
        resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return resized[0].permute(1, 2, 0).clamp(0, 1).contiguous().numpy()


def resize_uint8(image: np.ndarray, size) -> np.ndarray:
    """`resize` for pictures that stay 8-bit (face crops, detector copies, previews): uint8 in and out, the
    same filter, run by torch's uint8 kernel, which is several times faster than the float one on large
    frames (a 1080p frame shrunk to 640 px: about 13 ms instead of 45 on 2 cores). The result is within
    one level of `to_uint8(resize(image, size))`."""
    image = to_uint8(image)
    if image.shape[:2] == tuple(size):
        return image
    import torch
    import torch.nn.functional as F

    shrinking = size[0] < image.shape[0] or size[1] < image.shape[1]
    # A channels-last view of the HxWx3 array: the layout the fast kernel works in, without a copy. Decoded
    # frames are read-only arrays, which torch warns about (once); the view is only read here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(pixels, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False,
                            antialias=shrinking)
    return resized[0].permute(1, 2, 0).contiguous().numpy()


def _as_float_image(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return image.astype(np.float32)


def aspect_ratio_differs(image_size, size) -> bool:
    """True when two (height, width) shapes differ by more than 1% in aspect ratio."""
    image_ratio = image_size[1] / image_size[0]
    target_ratio = size[1] / size[0]
    return abs(image_ratio / target_ratio - 1) > 0.01


def frame_files(directory):
    """Image files in a directory in frame order: by name, numbers compared as numbers (frame2 < frame10)."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise BadInput(f"cannot list the frames in {directory} ({error.strerror}); check its permissions") from None

    def natural_key(name):
        return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]

    frames = [name for name in names
              if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
              and os.path.isfile(os.path.join(directory, name))]
    return [os.path.join(directory, name) for name in sorted(frames, key=natural_key)]

