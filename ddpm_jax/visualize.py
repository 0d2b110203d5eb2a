"""Image grids, PNG / GIF files and an HTML player for samples and the reverse process.

Plain numpy + Pillow (no JAX), so it is cheap to import and test. Arrays follow the
model's NHWC layout. Model outputs in [-1, 1] go through ``to_uint8`` first; every other
function takes uint8 images with C in {1, 3} (grayscale or RGB).
"""

import base64
import html
import importlib.resources
import io
import json
import math
import os
import string

import numpy as np
import numpy.typing as npt
from etils import epath
from PIL import Image

_CHANNELS = (1, 3)
_MIN_GIF_FRAME_MS = 20  # Browsers play shorter GIF frame delays at 100 ms.
MIN_TILE_SIZE = 96  # pixels: make_grid upscales smaller images to at least this by default


def _check_uint8_images(name: str, images: npt.ArrayLike, *, axes: str) -> np.ndarray:
    """Returns ``images`` as a uint8 array after checking its rank, dtype and channels.

    Args:
        name: Argument name used in error messages.
        images: Array whose last axis is the channel axis.
        axes: Expected axis names, e.g. "N, H, W, C"; their count is the expected rank.

    Raises:
        ValueError: Wrong rank, an empty axis, C not in {1, 3}, or a dtype other than uint8.
    """
    images = np.asarray(images)
    ndim = len(axes.split(","))
    if images.ndim != ndim or 0 in images.shape or images.shape[-1] not in _CHANNELS:
        raise ValueError(
            f"{name} must have shape [{axes}] with C in {{1, 3}} and no empty axis; "
            f"got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (see to_uint8); got dtype {images.dtype}")
    return images


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raises ValueError unless ``value`` is an int in [low, high] (no upper bound if None)."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bounds}; got {value!r}")


def _to_pil(image: np.ndarray) -> Image.Image:
    """Wraps a checked uint8 [H, W, C] image as a Pillow image (mode "L" or "RGB")."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _png_bytes(image: np.ndarray) -> bytes:
    """Encodes a checked uint8 [H, W, C] image as PNG bytes."""
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_data_uri(image: np.ndarray) -> str:
    """Encodes a checked uint8 [H, W, C] image as a ``data:image/png;base64,`` URI."""
    return "data:image/png;base64," + base64.b64encode(_png_bytes(image)).decode("ascii")


def to_uint8(images: npt.ArrayLike) -> np.ndarray:
    """Maps model-range images in [-1, 1] to uint8 pixels in [0, 255].

    Each value becomes floor((x + 1) * 127.5 + 0.5), i.e. rounded half up, then
    clipped: -1 -> 0, 0 -> 128, 1 -> 255; values outside [-1, 1] saturate.

    Args:
        images: Float array of any shape, typically [..., H, W, C].

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: ``images`` contains NaN.
    """
    images = np.asarray(images, dtype=np.float64)
    num_nan = np.isnan(images).sum()
    if num_nan:
        raise ValueError(f"images contain NaN ({num_nan} of {images.size} values)")
    return np.clip(np.floor((images + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


def _upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of checked [N, H, W, C] images by an integer ``scale``."""
    return images.repeat(scale, axis=1).repeat(scale, axis=2)


def grid_scale_for(height: int, width: int, *, min_size: int = MIN_TILE_SIZE) -> int:
    """The smallest integer factor that makes an H x W image at least ``min_size`` pixels on
    its longer side (1 for images that already are): 4 for 28x28, 3 for 32x32, 1 for 128x128."""
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    _check_int("min_size", min_size, 1)
    return max(1, math.ceil(min_size / max(height, width)))


def make_grid(
    images: npt.ArrayLike,
    *,
    num_cols: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    scale: int | None = None,
) -> np.ndarray:
    """Tiles images row-major into one image, with ``padding`` pixels around every tile.

    Args:
        images: uint8 [N, H, W, C], C in {1, 3}.
        num_cols: Tiles per row; default ceil(sqrt(N)) (near-square). Capped at N.
        padding: Pixels between tiles and around the border, >= 0 (not scaled).
        pad_value: Value in [0, 255] of the padding and of empty trailing cells.
        scale: Integer nearest-neighbour upscaling factor of every tile, >= 1; default
            ``grid_scale_for(H, W)``, so tiles of small images are at least 96 pixels wide.

    Returns:
        uint8 [rows * (sH + padding) + padding, cols * (sW + padding) + padding, C], where
        s = scale, cols = min(num_cols, N) and rows = ceil(N / cols). Tile i has its top-left
        corner at (padding + (i // cols) * (sH + padding), padding + (i % cols) * (sW + padding)).

    Raises:
        ValueError: Bad shape or dtype of ``images``, or a bad option value.
    """
    images = _check_uint8_images("images", images, axes="N, H, W, C")
    if num_cols is not None:
        _check_int("num_cols", num_cols, 1)
    _check_int("padding", padding, 0)
    _check_int("pad_value", pad_value, 0, 255)
    if scale is None:
        scale = grid_scale_for(images.shape[1], images.shape[2])
    _check_int("scale", scale, 1)
    images = _upscale(images, scale)
    n, h, w, c = images.shape
    cols = min(num_cols or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    grid_shape = (rows * (h + padding) + padding, cols * (w + padding) + padding, c)
    grid = np.full(grid_shape, pad_value, np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_png(path: str | os.PathLike[str], image: npt.ArrayLike) -> None:
    """Writes one image as a PNG file (mode "L" for C = 1, "RGB" for C = 3).

    Args:
        path: Destination file; its directory must exist.
        image: uint8 [H, W, C], C in {1, 3}.

    Raises:
        ValueError: Bad shape or dtype of ``image``.
    """
    image = _check_uint8_images("image", image, axes="H, W, C")
    epath.Path(path).write_bytes(_png_bytes(image))


def save_gif(
    path: str | os.PathLike[str],
    frames: npt.ArrayLike,
    *,
    frame_ms: int = 60,
    hold_last_ms: int = 1500,
    scale: int = 1,
) -> None:
    """Writes frames as an animated GIF that loops forever and holds the last frame.

    Frame f is shown for ``frame_ms``, the last one for ``hold_last_ms`` (per-frame
    durations; no frame is repeated). GIF stores durations in units of 10 ms, so other
    values are rounded. Pillow merges consecutive identical frames into one, summing
    their durations, so the file has one frame per run of identical frames: F frames
    when consecutive frames differ. RGB frames are stored with a palette of at most 256
    colours per frame, so RGB frames with more colours are quantized; grayscale is exact.

    Args:
        path: Destination file; its directory must exist.
        frames: uint8 [F, H, W, C], C in {1, 3}, e.g. one ``make_grid`` per sampling step.
        frame_ms: Display time of every frame but the last, in milliseconds, >= 20.
        hold_last_ms: Display time of the last frame, in milliseconds, >= 20.
        scale: Integer nearest-neighbour upscaling factor, >= 1, so small images are visible.

    Raises:
        ValueError: Bad shape or dtype of ``frames``, or a bad option value.
    """
    frames = _check_uint8_images("frames", frames, axes="F, H, W, C")
    _check_int("frame_ms", frame_ms, _MIN_GIF_FRAME_MS)
    _check_int("hold_last_ms", hold_last_ms, _MIN_GIF_FRAME_MS)
    _check_int("scale", scale, 1)
    frames = _upscale(frames, scale)
    first, *rest = [_to_pil(frame) for frame in frames]
    with epath.Path(path).open("wb") as f:
        first.save(
            f,
            format="GIF",
            save_all=True,
            append_images=rest,
            duration=[frame_ms] * (len(frames) - 1) + [hold_last_ms],
            loop=0,
        )


def _html_template() -> string.Template:
    """The player page (package data reverse_process.html): $title, $last_index, $frames_json."""
    page = importlib.resources.files("ddpm_jax").joinpath("reverse_process.html")
    return string.Template(page.read_text(encoding="utf-8"))


def save_reverse_process_html(
    path: str | os.PathLike[str],
    *,
    x_t: npt.ArrayLike,
    x0_pred: npt.ArrayLike,
    timesteps: npt.ArrayLike,
    title: str = "DDPM reverse process",
) -> None:
    """Writes a self-contained HTML player for the reverse (denoising) process.

    Frame f shows the grid x_t[f] beside the model's current prediction x0_pred[f], with
    a slider over all frames, play / pause, a speed control and the label "t = <t>"
    ("x_0" where t = 0). Each frame is a whole grid image (e.g. ``make_grid`` of the batch
    at that step). Frames are PNG-encoded once and embedded as base64 data URIs (2 * F
    images), CSS and JS are inline: the file needs no network. Noise does not compress,
    so the file holds roughly 2 * F * H * W * C * 4/3 bytes: for T = 1000 steps keep the
    grid small or pass every k-th step.

    Args:
        path: Destination file; its directory must exist.
        x_t: uint8 [F, H, W, C], C in {1, 3}: the sample grid at each recorded step.
        x0_pred: uint8 [F, H2, W2, C2], C2 in {1, 3}: the predicted-x_0 grid at those steps.
        timesteps: Integers [F], >= 0: the paper's t of x_t[f], T ... 1 (schedule index
            + 1); 0 marks the final sample x_0.
        title: Page title and heading (plain text; it is HTML-escaped).

    Raises:
        ValueError: Bad shape or dtype of an argument, or frame counts that differ.
    """
    x_t = _check_uint8_images("x_t", x_t, axes="F, H, W, C")
    x0_pred = _check_uint8_images("x0_pred", x0_pred, axes="F, H, W, C")
    timesteps = np.asarray(timesteps)
    if timesteps.ndim != 1 or not np.issubdtype(timesteps.dtype, np.integer):
        raise ValueError(
            f"timesteps must be a 1-D integer array; got shape {timesteps.shape}, "
            f"dtype {timesteps.dtype}"
        )
    if (timesteps < 0).any():
        raise ValueError(f"timesteps must be >= 0; got min {timesteps.min()}")
    if not len(x_t) == len(x0_pred) == len(timesteps):
        raise ValueError(
            f"x_t, x0_pred and timesteps must have the same number of frames; got "
            f"{len(x_t)}, {len(x0_pred)} and {len(timesteps)}"
        )
    frames_json = json.dumps({
        "x_t": [_png_data_uri(frame) for frame in x_t],
        "x0_pred": [_png_data_uri(frame) for frame in x0_pred],
        "labels": [f"t = {t}" if t > 0 else "x_0" for t in timesteps.tolist()],
    })
    page = _html_template().substitute(
        title=html.escape(title), last_index=len(x_t) - 1, frames_json=frames_json
    )
    epath.Path(path).write_text(page, encoding="utf-8")
