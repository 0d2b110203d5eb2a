"""Image geometry and colour: every image, whatever its mode and size, to uint8 [H, W, C].

Two geometries. tfds datasets keep their documented recipe (``fit_image``: a centred square,
then a bilinear resize). Image folders follow guided-diffusion's ``center_crop_arr``
(``resize_and_center_crop``): halve with a box filter while the shorter side is at least twice
the target, resize the shorter side to the target with bicubic, then crop the centre.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited onto this colour (white, as an image viewer shows them).
BACKGROUND = (255, 255, 255)
# Channels of each supported output, and the Pillow mode that holds them.
MODES = {1: "L", 3: "RGB"}


def fit_image(
    image: np.ndarray, *, shape: tuple[int, int, int], center_crop: int | None = None
) -> np.ndarray:
    """Crops the centred square of an image and resizes it (Pillow bilinear, antialiased).

    Args:
        image: uint8 [h, w, C].
        shape: (H, W, C) wanted.
        center_crop: side of the centred square to keep; None keeps the largest.

    Returns:
        uint8 [H, W, C]; ``image`` itself when it already has that shape.
    """
    if image.shape == shape:
        return image
    height, width = image.shape[:2]
    side = center_crop or min(height, width)
    if side > min(height, width):
        raise ValueError(
            f"cannot crop a centred {side}x{side} square from a {height}x{width} image; "
            "use a center_crop no larger than the image"
        )
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    pil = Image.fromarray(square[..., 0] if square.shape[-1] == 1 else square)
    resized = pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(shape)


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Converts any Pillow image to 8-bit grey ("L") or RGB.

    Palette images become RGBA first (a palette may carry transparency); anything with alpha
    is composited onto ``BACKGROUND``; 16- and 32-bit integer greys keep their top 8 bits of
    precision (x / 257, rounded); CMYK, YCbCr and the rest use Pillow's own conversion.

    Args:
        image: an opened image, any mode.
        channels: 1 or 3.

    Returns:
        An "L" (channels 1) or "RGB" (channels 3) image of the same size.
    """
    if channels not in MODES:
        raise ValueError(f"channels must be one of {sorted(MODES)}, got {channels}")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I" (16-bit PNGs open as these)
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(MODES[channels])


def resize_and_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr`` (image_datasets.py): the centred size x size square.

    While the shorter side is at least 2 * size the image is halved with a box filter; then it is
    resized (bicubic, antialiased) so the shorter side is ``size`` (the longer side rounded), and
    the centre is cropped. Images smaller than ``size`` are upsampled by the same resize.

    Args:
        image: an "L" or "RGB" image.
        size: side of the output, >= 1.

    Returns:
        uint8 [size, size] ("L") or [size, size, 3] ("RGB").
    """
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size),
                         resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size]


def folder_pixels(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """An image file's pixels as an image folder stores them: EXIF rotation applied (camera
    photos stored sideways), ``to_channels``, ``resize_and_center_crop``; uint8 [size, size,
    channels]."""
    pixels = resize_and_center_crop(to_channels(ImageOps.exif_transpose(image), channels), size)
    return pixels.reshape(size, size, channels)
