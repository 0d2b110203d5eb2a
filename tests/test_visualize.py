"""Tests for ddpm_jax.visualize: uint8 conversion, grids, PNG, GIF and the HTML player."""

import base64
import hashlib
import html.parser
import io
import re

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import visualize

_VOID_ELEMENTS = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
     "track", "wbr"]
)
_DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _tiles(n: int, h: int, w: int, c: int) -> np.ndarray:
    """uint8 [n, h, w, c] where every pixel of tile i equals i (distinct, never 255)."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, h, w, c)).copy()


def _frames(f: int, h: int, w: int, c: int) -> np.ndarray:
    """uint8 [f, h, w, c] grayscale ramps, different in every frame (exact in a GIF palette)."""
    ramp = (np.arange(h * w).reshape(h, w) * 7) % 256
    frames = (ramp[None] + 31 * np.arange(f)[:, None, None]) % 256
    return np.repeat(frames[..., None], c, axis=-1).astype(np.uint8)


class _TagChecker(html.parser.HTMLParser):
    """Records start tags with their attributes and checks non-void tags balance."""

    def __init__(self):
        super().__init__()
        self.open_tags: list[str] = []
        self.start_tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.start_tags.append((tag, dict(attrs)))
        if tag not in _VOID_ELEMENTS:
            self.open_tags.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.errors.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if not self.open_tags or self.open_tags[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open_tags[-1:]}")
        else:
            self.open_tags.pop()


def test_to_uint8_maps_endpoints_rounds_half_up_and_clips():
    x = np.array([-1.0, 0.0, 1.0, -3.0, 2.5, -0.5, 0.5])
    # (x + 1) * 127.5 rounded half up: 0, 127.5 -> 128, 255, clipped, 63.75 -> 64, 191.25 -> 191.
    np.testing.assert_array_equal(visualize.to_uint8(x), [0, 128, 255, 0, 255, 64, 191])
    assert visualize.to_uint8(x).dtype == np.uint8


def test_to_uint8_keeps_shape():
    x = np.zeros((2, 5, 4, 3), np.float32)
    assert visualize.to_uint8(x).shape == (2, 5, 4, 3)


def test_to_uint8_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        visualize.to_uint8(np.array([0.0, np.nan]))


@pytest.mark.parametrize(
    "n, num_cols, padding, rows, cols",
    [
        (1, None, 2, 1, 1),
        (4, None, 2, 2, 2),
        (5, None, 0, 2, 3),
        (10, None, 1, 3, 4),
        (16, None, 2, 4, 4),
        (6, 2, 3, 3, 2),
        (7, 7, 2, 1, 7),
        (3, 8, 2, 1, 3),  # num_cols is capped at N
    ],
)
@pytest.mark.parametrize("c", [1, 3])
def test_make_grid_size_and_tile_positions(n, num_cols, padding, rows, cols, c):
    h, w = 5, 4
    grid = visualize.make_grid(_tiles(n, h, w, c), num_cols=num_cols, padding=padding, scale=1)
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * (h + padding) + padding, cols * (w + padding) + padding, c)
    expected = np.full(grid.shape, 255, np.uint8)
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        expected[top : top + h, left : left + w] = i
    np.testing.assert_array_equal(grid, expected)


def test_make_grid_pad_value_fills_padding_and_empty_cells():
    grid = visualize.make_grid(np.full((3, 2, 2, 1), 9, np.uint8), padding=1, pad_value=0,
                               scale=1)
    assert grid.shape == (7, 7, 1)
    assert (grid == 9).sum() == 3 * 4
    assert (grid == 0).sum() == grid.size - 3 * 4
    assert (grid[4:6, 4:6] == 0).all()  # the fourth cell is empty


@pytest.mark.parametrize("h, w, expected", [(28, 28, 4), (32, 32, 3), (64, 64, 2), (96, 96, 1),
                                             (97, 40, 1), (20, 30, 4), (256, 256, 1)])
def test_grid_scale_for_is_the_smallest_factor_reaching_96_pixels(h, w, expected):
    scale = visualize.grid_scale_for(h, w)
    assert scale == expected
    assert max(h, w) * scale >= 96 and (scale == 1 or max(h, w) * (scale - 1) < 96)


@pytest.mark.parametrize("scale", [None, 1, 3])
def test_make_grid_upscales_tiles_by_nearest_neighbour(scale):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    grid = visualize.make_grid(images, num_cols=3, padding=2, scale=scale)
    s = 4 if scale is None else scale  # 28 px: the default reaches 96 px with 4x
    assert grid.shape == (2 * (28 * s + 2) + 2, 3 * (28 * s + 2) + 2, 1)
    for i, image in enumerate(images):
        top, left = 2 + (i // 3) * (28 * s + 2), 2 + (i % 3) * (28 * s + 2)
        tile = grid[top : top + 28 * s, left : left + 28 * s]
        for dy in range(s):  # every s x s block of the tile is one source pixel
            for dx in range(s):
                np.testing.assert_array_equal(tile[dy::s, dx::s], image)


@pytest.mark.parametrize("c, mode", [(1, "L"), (3, "RGB")])
def test_save_png_round_trips(tmp_path, c, mode):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, c), dtype=np.uint8)
    path = tmp_path / "image.png"
    visualize.save_png(path, image)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        assert loaded.mode == mode
        assert loaded.size == (9, 7)
        pixels = np.asarray(loaded)
    np.testing.assert_array_equal(pixels.reshape(image.shape), image)


@pytest.mark.parametrize("c, scale", [(1, 1), (1, 3), (3, 2)])
def test_save_gif_frames_loop_durations_and_pixels(tmp_path, c, scale):
    frames = _frames(5, 6, 8, c)
    path = tmp_path / "anim.gif"
    visualize.save_gif(path, frames, frame_ms=40, hold_last_ms=1200, scale=scale)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 5
        assert gif.info["loop"] == 0
        assert gif.size == (8 * scale, 6 * scale)
        first = np.asarray(gif.convert("RGB"))
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        last = np.asarray(gif.convert("RGB"))
    assert durations == [40, 40, 40, 40, 1200]
    upscaled = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    # Grayscale values (<= 256 per frame) fit the GIF palette exactly: no tolerance needed.
    np.testing.assert_array_equal(first, np.broadcast_to(upscaled[0], first.shape))
    np.testing.assert_array_equal(last, np.broadcast_to(upscaled[-1], last.shape))


def test_save_gif_merges_identical_consecutive_frames(tmp_path):
    frames = _frames(3, 4, 4, 1)[[0, 1, 1, 2]]
    path = tmp_path / "anim.gif"
    visualize.save_gif(path, frames, frame_ms=50, hold_last_ms=500)
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [50, 100, 500]


def test_save_gif_single_frame(tmp_path):
    path = tmp_path / "still.gif"
    visualize.save_gif(path, _frames(1, 4, 4, 3))
    with Image.open(path) as gif:
        assert gif.n_frames == 1


def _write_html(tmp_path, num_frames, title="Reverse <process> & co"):
    x_t = _frames(num_frames, 10, 12, 1)
    x0_pred = _frames(num_frames, 6, 8, 3)
    timesteps = list(range(num_frames, 0, -1))[:-1] + [0]
    path = tmp_path / "reverse.html"
    visualize.save_reverse_process_html(
        path, x_t=x_t, x0_pred=x0_pred, timesteps=timesteps, title=title
    )
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("num_frames", [1, 7])
def test_reverse_process_html_structure(tmp_path, num_frames):
    page = _write_html(tmp_path, num_frames)
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.open_tags == []
    tags = [tag for tag, _ in checker.start_tags]
    assert tags.count("html") == tags.count("head") == tags.count("body") == 1
    ranges = [attrs for tag, attrs in checker.start_tags
              if tag == "input" and attrs.get("type") == "range"]
    assert len(ranges) == 1
    assert ranges[0]["min"] == "0" and ranges[0]["max"] == str(num_frames - 1)
    assert any(tag == "button" and attrs.get("id") == "play" for tag, attrs in checker.start_tags)
    assert any(tag == "select" and attrs.get("id") == "speed" for tag, attrs in checker.start_tags)
    assert "<title>Reverse &lt;process&gt; &amp; co</title>" in page
    assert "Reverse <process>" not in page


def test_reverse_process_html_labels(tmp_path):
    page = _write_html(tmp_path, 4)
    for label in ['"t = 4"', '"t = 3"', '"t = 2"', '"x_0"']:
        assert page.count(label) == 1


def test_reverse_process_html_embeds_every_frame_as_png(tmp_path):
    num_frames = 5
    page = _write_html(tmp_path, num_frames)
    assert page.count("data:image/png;base64,") == 2 * num_frames
    payloads = _DATA_URI.findall(page)
    assert len(payloads) == 2 * num_frames
    sizes = [(12, 10)] * num_frames + [(8, 6)] * num_frames  # x_t frames, then x0_pred frames
    first_frames = [_frames(num_frames, 10, 12, 1)[0, ..., 0], _frames(num_frames, 6, 8, 3)[0]]
    for index, (payload, size) in enumerate(zip(payloads, sizes)):
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            assert image.format == "PNG"
            assert image.size == size
            if index % num_frames == 0:
                expected = first_frames[index // num_frames]
                np.testing.assert_array_equal(np.asarray(image), expected)


def test_reverse_process_html_is_self_contained(tmp_path):
    page = _write_html(tmp_path, 3)
    assert "http://" not in page
    assert "https://" not in page
    assert re.search(r"""(src|href)\s*=\s*["']?//""", page) is None
    assert "<link" not in page
    assert "@import" not in page and "url(" not in page
    assert re.search(r"<script[^>]*\ssrc=", page) is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: visualize.make_grid(np.zeros((4, 4, 3), np.uint8)), r"\[N, H, W, C\]"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 2), np.uint8)), r"C in \{1, 3\}"),
        (lambda: visualize.make_grid(np.zeros((0, 4, 4, 3), np.uint8)), "empty"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 3), np.uint8), num_cols=0), "num_cols"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 3), np.uint8), padding=-1), "padding"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 3), np.uint8), pad_value=256),
         "pad_value"),
        (lambda: visualize.make_grid(np.zeros((2, 4, 4, 3), np.uint8), scale=0), "scale"),
        (lambda: visualize.grid_scale_for(0, 4), "height"),
        (lambda: visualize.save_png("unused.png", np.zeros((1, 4, 4, 3), np.uint8)), "H, W, C"),
        (lambda: visualize.save_png("unused.png", np.zeros((4, 4, 4), np.uint8)), r"C in"),
        (lambda: visualize.save_gif("unused.gif", np.zeros((4, 4, 3), np.uint8)), "F, H, W, C"),
        (lambda: visualize.save_gif("unused.gif", np.zeros((2, 4, 4, 3), np.uint8), scale=0),
         "scale"),
        (lambda: visualize.save_gif("unused.gif", np.zeros((2, 4, 4, 3), np.uint8), frame_ms=5),
         "frame_ms"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((2, 4, 4, 1), np.uint8), timesteps=[3, 2, 1]), "same number"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((3, 4, 4, 1), np.uint8), timesteps=[3, 2]), "same number"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((3, 4, 4, 4), np.uint8), timesteps=[3, 2, 1]), "x0_pred"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 2, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((3, 4, 4, 1), np.uint8), timesteps=[3, 2, 1]), "x_t"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((3, 4, 4, 1), np.uint8), timesteps=[3.0, 2.0, 1.0]), "integer"),
        (lambda: visualize.save_reverse_process_html(
            "unused.html", x_t=np.zeros((3, 4, 4, 1), np.uint8),
            x0_pred=np.zeros((3, 4, 4, 1), np.uint8), timesteps=[1, 0, -1]), ">= 0"),
    ],
)
def test_bad_inputs_raise_value_error(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        call()
    assert list(tmp_path.iterdir()) == []  # nothing is written on bad input


def test_reverse_process_html_page_is_unchanged_by_its_move_to_package_data(tmp_path,
                                                                            monkeypatch):
    """The page (package data ``reverse_process.html``) writes the same bytes as the inline
    template it replaced (commit fef72b6). PNG encoding is stubbed out, so the digest depends on
    the page and the frames' JSON only, not on Pillow's zlib; after a deliberate edit of the
    page, update the digest."""
    monkeypatch.setattr(visualize, "_png_data_uri",
                        lambda frame: f"png:{frame.shape}:{int(frame.sum())}")
    page = _write_html(tmp_path, 3)
    assert hashlib.sha256(page.encode("utf-8")).hexdigest() == (
        "e5c234d393587061f698f9d9a2b6f128c4e0404051095bb5d60f24754c953258")

