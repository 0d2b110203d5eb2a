"""Makes the pictures of docs/guides/editing.md from a trained run (the demo's by default).

    python docs/guides/editing_figures.py --workdir runs/fmnist --out docs/_static/editing

Writes inpaint.png, sdedit.png, inversion.png and interpolation.png (rows described in the
guide) and prints the inversion round trip's error. Everything uses the run's EMA parameters,
the first 6 test images and fixed seeds.
"""

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from ddpm_jax import data, generate, sampling, train_lib, visualize  # noqa: E402

NUM_IMAGES = 6


def save_rows(path: pathlib.Path, rows: list[np.ndarray]) -> None:
    """Float image rows [N, H, W, C] in [-1, 1] as one grid, a row per entry, 3x upscaled."""
    images = np.concatenate([visualize.to_uint8(np.clip(r, -1, 1)) for r in rows])
    visualize.save_png(path, visualize.make_grid(images, num_cols=len(rows[0]), scale=3))
    print(path, f"{os.path.getsize(path) / 1024:.0f} KB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = generate.load_workdir(args.workdir)
    f = train_lib.denoiser(trained.model, trained.ema_params)
    s = trained.schedule
    source = data.load_split(trained.config.data.name, f"test[:{NUM_IMAGES}]",
                             data_dir=trained.config.data.data_dir)
    x0 = jnp.asarray(next(data.eval_batches(source, batch_size=NUM_IMAGES))["image"])
    key = jax.random.key(0)

    # Inpainting: the left half kept, the right half filled in; replacement, then RePaint.
    mask = jnp.zeros(x0.shape[1:]).at[:, :14].set(1.0)
    fill = jax.jit(lambda k, r: sampling.inpaint(f, s, k, x0, mask, num_steps=50, resample=r,
                                                 jump=5), static_argnums=1)
    save_rows(out / "inpaint.png", [x0, jnp.where(mask == 1, x0, -1.0), fill(key, 1),
                                    fill(key, 5), fill(jax.random.key(1), 5)])

    # SDEdit at three strengths, ancestral over the steps below t = strength T (50 in all).
    edit = lambda k, strength: sampling.sdedit(f, s, k, x0, strength=strength, sampler="ddpm",
                                               num_steps=max(1, round(50 * strength)))
    save_rows(out / "sdedit.png", [x0] + [jax.jit(edit, static_argnums=1)(key, strength)
                                          for strength in (0.3, 0.5, 0.7)])

    # DDIM inversion (100 steps) and deterministic DDIM back from that x_T.
    x_T = jax.jit(lambda x: sampling.ddim_invert(f, s, x, num_steps=100))(x0)
    back = jax.jit(lambda k, z: sampling.sample(f, s, k, x0.shape, sampler="ddim", eta=0.0,
                                                num_steps=100, spacing="time", clip_x0=False,
                                                x_T=z))(key, x_T)
    save_rows(out / "inversion.png", [x0, x_T / 3.0, back])
    error = np.abs(np.asarray(back) - np.asarray(x0))
    print(f"inversion round trip (100 steps): mean |error| {error.mean():.4f}, max "
          f"{error.max():.4f} (pixel step 2/255 = 0.0078); x_T std {float(x_T.std()):.3f}")

    # Interpolation: slerp between two drawn x_T, deterministic DDIM (50 steps), 8 images.
    z = jax.random.normal(jax.random.key(7), (2, *trained.image_shape))
    row = jax.jit(lambda zs: sampling.sample(f, s, key, zs.shape, sampler="ddim", eta=0.0,
                                             num_steps=50, spacing="time", x_T=zs))(
        sampling.slerp(z[0], z[1], jnp.linspace(0, 1, 8)))
    save_rows(out / "interpolation.png", [row])


if __name__ == "__main__":
    main()
