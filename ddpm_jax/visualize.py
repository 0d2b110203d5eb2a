"""Image grids, PNG / GIF files and an HTML viewer for samples and the reverse process.

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
import zlib

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


def log_snr_frames(log_snr: npt.ArrayLike, num_frames: int, *,
                   window: tuple[float, float] = (-4.0, 5.0)) -> np.ndarray:
    """Picks frames of a reverse process spaced evenly in log-SNR, where the picture changes.

    Between frames spaced evenly in log-SNR the noise level relative to the signal,
    exp(-log_snr / 2), changes by the same factor. The default ``window`` is where x_t visibly
    forms: on the Fashion-MNIST demo's ancestral chains, the correlation of x_t with the final
    sample rises from 0.1 at log-SNR -3.6 to 0.99 at +4.8. For a linear schedule with T = 1000
    that is t from 629 down to 21, where uniform-in-t picks put 60% of their frames and picks
    over the whole log-SNR range 46%. The first frame (x_T) and the last always come first and
    last; targets run evenly across the window (clipped to the chain's range), each picking its
    nearest frame, and where several share a frame (steps coarser than the spacing) the choice
    moves to neighbouring frames, so the count is exact.

    Args:
        log_snr: Floats [F], nondecreasing (from x_T towards x_0), finite except a last +inf
            (the final sample x_0), e.g. ``schedules.log_snr(alphas_cumprod)`` of the frames.
        num_frames: How many frames to pick, >= 2; all F if F is smaller.
        window: The log-SNR range (low, high) the targets span.

    Returns:
        int64 [min(num_frames, F)], strictly increasing frame indices from 0 to F - 1.

    Raises:
        ValueError: ``log_snr`` is not 1-D with >= 2 values, decreases, or is NaN / infinite
            anywhere but a last +inf; ``num_frames`` < 2; or ``window`` is not low < high.
    """
    _check_int("num_frames", num_frames, 2)
    if not window[0] < window[1]:
        raise ValueError(f"window must be (low, high) with low < high; got {window}")
    lam = np.asarray(log_snr, np.float64)
    chain = lam[:-1] if lam.ndim == 1 and lam.size and lam[-1] == np.inf else lam
    if (lam.ndim != 1 or lam.size < 2 or not np.isfinite(chain).all()
            or (np.diff(chain) < 0).any()):
        raise ValueError(f"log_snr must be 1-D, >= 2 values, nondecreasing and finite but for a "
                         f"last +inf; got shape {lam.shape}, values {lam[:3]}...{lam[-3:]}")
    count = min(num_frames, lam.size)
    extra = lam.size - chain.size  # the final sample, appended after the chain's picks
    low, high = np.clip(window, chain[0], chain[-1])
    targets = np.linspace(low, high, count - extra)
    upper = np.clip(np.searchsorted(chain, targets), 1, chain.size - 1)
    nearer_lower = targets - chain[upper - 1] <= chain[upper] - targets
    picks = np.append(upper - nearer_lower, np.arange(chain.size, lam.size))
    picks[0], picks[-1] = 0, lam.size - 1
    for i in range(1, count - 1):  # strictly increasing: push repeats forward...
        picks[i] = max(picks[i], picks[i - 1] + 1)
    for i in range(count - 2, -1, -1):  # ...and back below the end
        picks[i] = min(picks[i], picks[i + 1] - 1)
    return picks.astype(np.int64)


def _deflated_frames(name: str, frames: npt.ArrayLike) -> dict:
    """A viewer stream: checked uint8 [F, H, W, C] frames as {"shape", "deflate"}, where
    "deflate" is base64 of zlib-compressed raw pixels (C-order), frame 0 as is and every later
    frame as its difference from the one before, mod 256 (small where the chain moves little)."""
    frames = _check_uint8_images(name, frames, axes="F, H, W, C")
    deltas = np.diff(frames, axis=0, prepend=np.zeros_like(frames[:1]))  # uint8 wraps mod 256
    payload = base64.b64encode(zlib.compress(deltas.tobytes(), 6)).decode("ascii")
    return {"shape": list(frames.shape), "deflate": payload}


def _html_template() -> string.Template:
    """The viewer page (package data reverse_process.html): $title, $note, $last_index, $data."""
    page = importlib.resources.files("ddpm_jax").joinpath("reverse_process.html")
    return string.Template(page.read_text(encoding="utf-8"))


def save_reverse_process_html(
    path: str | os.PathLike[str],
    *,
    x_t: npt.ArrayLike,
    x0_pred: npt.ArrayLike,
    timesteps: npt.ArrayLike,
    log_snr: npt.ArrayLike,
    title: str = "DDPM reverse process",
    note: str = "",
) -> None:
    """Writes a self-contained HTML viewer of the reverse (denoising) process.

    Frame f shows the grid x_t[f] beside the model's prediction x0_pred[f], with the step's t
    ("x_0" where t = 0) and its signal-to-noise ratio, a slider over all frames (every frame is
    reachable), play / pause, the time a whole play takes, its pace (evenly in t, or evenly in
    log-SNR, where the picture changes), and the arrow keys stepping one frame (Space plays,
    Home / End jump). The URL fragment ``#frame=K`` opens frame K.

    Frames are raw uint8 pixels, each frame stored as its difference from the frame before
    (mod 256), zlib-compressed and base64-encoded into the page; the browser inflates them with
    its ``DecompressionStream`` and draws them on canvases, scaled up by an integer factor with
    image smoothing off. CSS and JS are inline: the file needs no network. Noise does not
    compress, so expect about half the raw size, 2 * F * H * W * C bytes: 16 Fashion-MNIST
    samples over T = 1000 steps make a page of a few tens of MB (see ``generate.write_outputs``).

    Args:
        path: Destination file; its directory must exist.
        x_t: uint8 [F, H, W, C], C in {1, 3}: the sample grid at each frame.
        x0_pred: uint8 [F, H2, W2, C2], C2 in {1, 3}: the predicted-x_0 grid at each frame.
        timesteps: Integers [F], >= 0: the paper's t of x_t[f], T ... 1 (schedule index + 1);
            0 marks the final sample x_0.
        log_snr: Floats [F]: log(abar_t / (1 - abar_t)) of each frame, finite or +inf (the
            final sample, shown as SNR = inf).
        title: Page title and heading (plain text; it is HTML-escaped).
        note: A paragraph under the heading, e.g. how the frames were made (plain text; it is
            HTML-escaped).

    Raises:
        ValueError: Bad shape or dtype of an argument, or frame counts that differ.
    """
    timesteps = np.asarray(timesteps)
    if timesteps.ndim != 1 or not np.issubdtype(timesteps.dtype, np.integer):
        raise ValueError(
            f"timesteps must be a 1-D integer array; got shape {timesteps.shape}, "
            f"dtype {timesteps.dtype}"
        )
    if (timesteps < 0).any():
        raise ValueError(f"timesteps must be >= 0; got min {timesteps.min()}")
    log_snr = np.asarray(log_snr, np.float64)
    if log_snr.shape != timesteps.shape or not (np.isfinite(log_snr) | (log_snr == np.inf)).all():
        raise ValueError(f"log_snr must be finite or +inf floats shaped like timesteps "
                         f"{timesteps.shape}; got shape {log_snr.shape}, "
                         f"values {log_snr.ravel()[:4]}")
    streams = {"x_t": _deflated_frames("x_t", x_t), "x0_pred": _deflated_frames("x0_pred", x0_pred)}
    counts = [streams["x_t"]["shape"][0], streams["x0_pred"]["shape"][0], len(timesteps)]
    if len(set(counts)) > 1:
        raise ValueError(
            f"x_t, x0_pred and timesteps must have the same number of frames; got "
            f"{counts[0]}, {counts[1]} and {counts[2]}"
        )
    data = json.dumps({
        "t": timesteps.tolist(),
        "log_snr": [round(v, 4) if np.isfinite(v) else None for v in log_snr.tolist()],
        **streams,
    })
    page = _html_template().substitute(
        title=html.escape(title), note=html.escape(note), last_index=len(timesteps) - 1,
        data=data,
    )
    epath.Path(path).write_text(page, encoding="utf-8")
