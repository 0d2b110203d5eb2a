"""Tests for ddpm_jax.visualize: uint8 conversion, grids, PNG, GIF and the HTML player."""

import base64
import html.parser
import json
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import schedules, visualize

_VOID_ELEMENTS = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
     "track", "wbr"]
)
_VIEWER_DATA = re.compile(r'<script type="application/json" id="data">(.*?)</script>', re.S)
CHROMIUM = shutil.which("chromium")


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


def decode_viewer_page(page: str) -> dict:
    """The viewer's data decoded independently of its JavaScript: t, log-SNR (None: +inf) and
    each stream's frames (zlib, then a running sum mod 256 over frames)."""
    data = json.loads(_VIEWER_DATA.search(page).group(1))
    for name in ("x_t", "x0_pred"):
        stream = data[name]
        raw = zlib.decompress(base64.b64decode(stream["deflate"], validate=True))
        deltas = np.frombuffer(raw, np.uint8).reshape(stream["shape"])
        data[name] = np.cumsum(deltas, axis=0, dtype=np.uint8)  # uint8 sums wrap mod 256
    return data


def _write_html(tmp_path, num_frames, title="Reverse <process> & co", note="x < y & z"):
    x_t = _frames(num_frames, 10, 12, 1)
    x0_pred = _frames(num_frames, 6, 8, 3)
    timesteps = list(range(num_frames, 0, -1))[:-1] + [0]
    log_snr = np.linspace(-10.0, 5.0, num_frames)
    log_snr[-1] = np.inf
    path = tmp_path / "reverse.html"
    visualize.save_reverse_process_html(path, x_t=x_t, x0_pred=x0_pred, timesteps=timesteps,
                                        log_snr=log_snr, title=title, note=note)
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
    ids = {attrs.get("id") for tag, attrs in checker.start_tags}
    assert {"play", "duration", "pace", "xt", "x0", "label", "snr"} <= ids
    assert [attrs["id"] for tag, attrs in checker.start_tags if tag == "canvas"] == ["xt", "x0"]
    assert "<title>Reverse &lt;process&gt; &amp; co</title>" in page
    assert '<p class="note">x &lt; y &amp; z</p>' in page
    assert "Reverse <process>" not in page


@pytest.mark.parametrize("c", [1, 3])
def test_reverse_process_html_embeds_every_frame_as_compressed_uint8(tmp_path, c):
    """Decoding the page's data in Python gives back every frame exactly, and t / log-SNR."""
    rng = np.random.default_rng(0)
    x_t = rng.integers(0, 256, (50, 9, 7, c), dtype=np.uint8)
    x0_pred = np.cumsum(rng.integers(0, 3, (50, 5, 6, 1)), axis=0).astype(np.uint8)  # wraps
    timesteps = np.append(np.arange(49, 0, -1), 0)
    log_snr = np.append(np.linspace(-9.0, 9.0, 49), np.inf)
    path = tmp_path / "reverse.html"
    visualize.save_reverse_process_html(path, x_t=x_t, x0_pred=x0_pred, timesteps=timesteps,
                                        log_snr=log_snr)
    data = decode_viewer_page(path.read_text(encoding="utf-8"))
    np.testing.assert_array_equal(data["x_t"], x_t)
    np.testing.assert_array_equal(data["x0_pred"], x0_pred)
    assert data["t"] == timesteps.tolist()
    np.testing.assert_allclose(data["log_snr"][:-1], log_snr[:-1], atol=1e-4)
    assert data["log_snr"][-1] is None  # +inf: the final sample
    assert "data:image" not in path.read_text(encoding="utf-8")  # no PNG data URIs


def test_reverse_process_html_stores_frame_differences(tmp_path):
    """A slowly changing chain costs far less than its raw size: frames are stored as their
    differences from the frame before, which compress."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.integers(-1, 2, (400, 32, 32, 1)), axis=0) + 128
    frames = np.clip(walk, 0, 255).astype(np.uint8)
    path = tmp_path / "reverse.html"
    visualize.save_reverse_process_html(path, x_t=frames, x0_pred=frames,
                                        timesteps=np.arange(400, 0, -1), log_snr=np.zeros(400))
    raw = 2 * frames.nbytes
    plain = 2 * len(base64.b64encode(zlib.compress(frames.tobytes(), 6)))
    assert path.stat().st_size < 0.5 * plain < raw


def test_reverse_process_html_is_self_contained(tmp_path):
    page = _write_html(tmp_path, 3)
    assert "http://" not in page
    assert "https://" not in page
    assert re.search(r"""(src|href)\s*=\s*["']?//""", page) is None
    assert "<link" not in page
    assert "@import" not in page and "url(" not in page
    assert re.search(r"<script[^>]*\ssrc=", page) is None


def _chain_log_snr(num_timesteps: int) -> np.ndarray:
    """log-SNR of a viewer's frames for the linear schedule: t = T ... 1 then +inf (x_0)."""
    abar = np.asarray(schedules.make_schedule("linear", num_timesteps).alphas_cumprod, np.float64)
    return np.append(np.log(abar / (1 - abar))[::-1], np.inf)


def test_log_snr_frames_are_the_nearest_frames_to_even_log_snr_targets():
    """Where the frames are denser than the spacing, each pick is the frame nearest to its
    target (brute force), from x_T to the final sample, and the count is exact."""
    lam = np.append(np.linspace(-10.0, 8.0, 3000) + 0.001 * np.sin(np.arange(3000)), np.inf)
    nearest = lambda targets: np.abs(lam[:-1, None] - targets[None]).argmin(axis=0)
    picks = visualize.log_snr_frames(lam, 61, window=(-20.0, 20.0))  # the chain's whole range
    np.testing.assert_array_equal(picks, np.append(nearest(np.linspace(lam[0], lam[-2], 60)),
                                                   3000))
    picks = visualize.log_snr_frames(lam, 61, window=(-4.0, 6.0))
    np.testing.assert_array_equal(picks[1:-1], nearest(np.linspace(-4.0, 6.0, 60))[1:])
    assert picks[0] == 0 and picks[-1] == 3000


def test_log_snr_frames_of_the_demo_schedule():
    """T = 1000 linear: exactly the asked count, strictly increasing, from x_T to x_0; all but
    x_T and x_0 inside the window, at log-SNR gaps even up to the rounding to a step where the
    steps are finer than the spacing (uniform t: a 25-fold spread), and never 2 spacings
    apart where they are not."""
    lam = _chain_log_snr(1000)
    picks = visualize.log_snr_frames(lam, 100)
    assert len(picks) == 100 and picks[0] == 0 and picks[-1] == 1000
    assert (np.diff(picks) > 0).all()
    inner = lam[picks[1:-1]]
    assert inner.min() >= -4.05 and inner.max() <= 5.05
    spacing = 9 / 98
    gaps = np.diff(inner)
    fine = np.diff(lam)[picks[1:-2]] < spacing / 4  # steps much finer than the spacing
    error = np.abs(gaps[fine] / spacing - 1)  # rounding to a step moves each end <= step / 2
    assert fine.sum() >= 60 and error.max() < 0.25 and np.median(error) < 0.05
    assert gaps.max() < 2 * spacing  # no jumps where the steps are coarser
    uniform = np.diff(lam[np.linspace(0, 999, 99).astype(int)])
    assert uniform.max() / uniform.min() > 25
    assert len(visualize.log_snr_frames(_chain_log_snr(20), 100)) == 21  # all when fewer
    np.testing.assert_array_equal(visualize.log_snr_frames(lam[:-1], 2), [0, 999])


def _bad_html(**changes):
    """save_reverse_process_html with valid arguments but ``changes`` (log_snr follows a changed
    timesteps' length unless given)."""
    args = dict(x_t=np.zeros((3, 4, 4, 1), np.uint8), x0_pred=np.zeros((3, 4, 4, 1), np.uint8),
                timesteps=[3, 2, 1], log_snr=[-1.0, 0.0, 1.0])
    if "timesteps" in changes:
        args["log_snr"] = np.zeros(len(changes["timesteps"]))
    args.update(changes)
    return lambda: visualize.save_reverse_process_html("unused.html", **args)


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
        (_bad_html(x0_pred=np.zeros((2, 4, 4, 1), np.uint8)), "same number"),
        (_bad_html(timesteps=[3, 2]), "same number"),
        (_bad_html(x0_pred=np.zeros((3, 4, 4, 4), np.uint8)), "x0_pred"),
        (_bad_html(x_t=np.zeros((3, 2, 4, 4, 1), np.uint8)), "x_t"),
        (_bad_html(timesteps=[3.0, 2.0, 1.0]), "integer"),
        (_bad_html(timesteps=[1, 0, -1]), ">= 0"),
        (_bad_html(log_snr=[-1.0, 0.0]), "log_snr must be finite or \\+inf floats shaped like"),
        (_bad_html(log_snr=[-np.inf, 0.0, 1.0]), "log_snr must be finite or \\+inf"),
        (_bad_html(log_snr=[np.nan, 0.0, 1.0]), "log_snr must be finite or \\+inf"),
        (lambda: visualize.log_snr_frames([1.0, 0.0, 2.0], 2), "nondecreasing"),
        (lambda: visualize.log_snr_frames([0.0, np.inf, 2.0], 2), "finite but for a last"),
        (lambda: visualize.log_snr_frames([0.0], 2), ">= 2 values"),
        (lambda: visualize.log_snr_frames([0.0, 1.0], 1), "num_frames"),
        (lambda: visualize.log_snr_frames([0.0, 1.0], 2, window=(1.0, 1.0)), "window"),
    ],
)
def test_bad_inputs_raise_value_error(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        call()
    assert list(tmp_path.iterdir()) == []  # nothing is written on bad input


def _chromium(page, frame, profile, output):
    """Headless Chromium opening ``page`` at ``#frame=K``, started in the background: ``output``
    is ``--screenshot=PNG`` or ``--dump-dom`` (the DOM to stdout once the page has drawn)."""
    return subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--force-color-profile=srgb",
         "--virtual-time-budget=1000",  # lets the page decode its frames before the output
         "--window-size=1200,900", output, f"{page.as_uri()}#frame={frame}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _find(screenshot, image):
    """Top-left corners (y, x) of every exact occurrence of ``image`` [h, w, 3] in
    ``screenshot``, found by searching for its middle row."""
    middle = image.shape[0] // 2
    needle, found = image[middle].tobytes(), []
    for y in range(middle, screenshot.shape[0] - image.shape[0] + middle + 1):
        row, x = screenshot[y].tobytes(), -1
        while (x := row.find(needle, x + 1)) >= 0:
            top = y - middle
            if x % 3 == 0 and np.array_equal(
                    screenshot[top:top + image.shape[0], x // 3:x // 3 + image.shape[1]], image):
                found.append((top, x // 3))
    return found


def _correlation(a, b):
    return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make test installs it)")
def test_reverse_process_html_in_chromium_shows_noise_half_formed_and_final(tmp_path):
    """The page in a real browser: at the slider's start, middle and end the x_t canvas shows
    exactly the frames written (pure noise, a half-formed image, the final sample), scaled up
    without smoothing, and the readout names t and the SNR."""
    yy, xx = np.mgrid[:28, :28]
    x0 = np.stack([np.where((yy - 14) ** 2 + (xx - 11 - 2 * i) ** 2 < 80 - 15 * i, 0.9, -0.9)
                   for i in range(4)])[..., None]  # four discs of different sizes
    num_frames, rng = 101, np.random.default_rng(0)
    signal = np.linspace(0.0, 1.0, num_frames)[:, None, None, None, None]  # half at the middle
    x_t = signal * x0 + np.sqrt(1 - signal ** 2) * rng.standard_normal((num_frames, *x0.shape))
    grids = lambda frames: np.stack([visualize.make_grid(visualize.to_uint8(f), scale=1)
                                     for f in frames])
    x_t_grids, x0_grids = grids(x_t), grids(np.clip(x_t / np.maximum(signal, 0.1), -1, 1))
    log_snr = np.append(np.linspace(-8.0, 8.0, num_frames - 1), np.inf)
    page = tmp_path / "reverse.html"
    visualize.save_reverse_process_html(page, x_t=x_t_grids, x0_pred=x0_grids,
                                        timesteps=np.arange(num_frames)[::-1], log_snr=log_snr)
    frames = [0, num_frames // 2, num_frames - 1]
    runs = [_chromium(page, frame, tmp_path / f"profile_{frame}",
                      f"--screenshot={tmp_path / f'{frame}.png'}") for frame in frames]
    dom = _chromium(page, frames[1], tmp_path / "profile_dom", "--dump-dom").communicate(
        timeout=60)[0]
    assert [run.wait(timeout=60) for run in runs] == [0, 0, 0]
    shots = [np.asarray(Image.open(tmp_path / f"{frame}.png").convert("RGB")) for frame in frames]
    scale = 512 // max(x_t_grids.shape[1:3])  # the page's integer upscaling (MAX_SIDE = 512)
    upscaled = lambda grid: np.repeat(grid, 3, axis=-1).repeat(scale, 0).repeat(scale, 1)
    final = upscaled(x_t_grids[-1])
    (top, left), *_ = _find(shots[-1], final)  # the x_t canvas is the leftmost match
    height, width = final.shape[:2]
    shown = [shot[top:top + height, left:left + width] for shot in shots]
    for frame, pixels in zip(frames, shown):
        np.testing.assert_array_equal(pixels, upscaled(x_t_grids[frame]))
    tiles = [pixels[::scale, ::scale, 0][2:30, 2:30] for pixels in shown]  # the first tile
    assert abs(_correlation(tiles[0], tiles[-1])) < 0.2  # start: noise, unrelated to x_0
    assert abs(_correlation(tiles[0][:, 1:], tiles[0][:, :-1])) < 0.2  # no spatial structure
    assert 0.4 < _correlation(tiles[1], tiles[-1]) < 0.9  # middle: half-formed
    assert len(_find(shots[1], upscaled(x0_grids[frames[1]]))) == 1  # the x_0 prediction too
    # The middle frame's readout: t = 50, log-SNR 0.08 (linspace(-8, 8, 100)[50]).
    assert '<span id="label">t = 50</span>' in dom
    assert '<span id="snr">SNR = 1.08  (log-SNR 0.08)</span>' in dom
    assert '<span id="counter">frame 50 / 100</span>' in dom
