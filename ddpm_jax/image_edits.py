"""sample.py's editing modes on a trained model: image files in, edited images out.

    from ddpm_jax import image_edits
    out = image_edits.edit("runs/fmnist", mode="inpaint", num_samples=8,
                           image="shirt.png", mask="left_half.png")       # a generate.Samples
    generate.write_outputs("runs/fmnist/inpainted", out)

Modes: ``inpaint`` (fill where the mask is black, keep where it is white), ``sdedit``
(noise ``image`` to ``strength`` and sample back) and ``interpolate`` (``num_samples`` images
between two noises x_T drawn from ``seed``, by slerp, sampled deterministically).
Images are read as image folders read them (``data.images``: any mode to the run's channels,
guided-diffusion's resize and centre crop to its size). A class-conditional model edits with
the null label (unconditionally), as bits/dim evaluates it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ddpm_jax import data, diffusion, generate, run_config, sampling, train_lib, visualize
from ddpm_jax.checkpointing import as_path
from ddpm_jax.data.images import folder_pixels
from ddpm_jax.pretrained import Pretrained
from ddpm_jax.sampling import editing

MODES = ("inpaint", "interpolate", "sdedit")


def read_image(path: str | os.PathLike[str], image_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [H, W, C] of an image file, converted and resized as an image folder's images.

    Raises:
      ValueError: for a non-square ``image_shape`` (folders hold square images) or a file that
        is not an image.
    """
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"image files are read for square models only, got {image_shape}")
    try:
        with as_path(path).open("rb") as f, Image.open(f) as image:
            return folder_pixels(image, height, channels)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {err}") from None


def read_mask(path: str | os.PathLike[str], image_shape: tuple[int, int, int]) -> np.ndarray:
    """float32 [H, W, 1] of a mask file: 1 (keep) where its grey level is >= 128 (white),
    0 (fill in) where it is darker."""
    grey = read_image(path, (*image_shape[:2], 1))
    return (grey >= 128).astype(np.float32)


def edit(workdir: str | generate.Trained | Pretrained, *, mode: str, num_samples: int,
         seed: int = 0, step: int | None = None, params: str = "ema",
         image: str | None = None, mask: str | None = None, strength: float | None = None,
         resample: int = 1, jump: int = 1, sampler: str | None = None,
         num_steps: int | None = None, spacing: str | None = None, eta: float | None = None,
         variance: str | None = None) -> generate.Samples:
    """Edits with a run's (or a pretrained model's) checkpoint; one jitted call.

    Args:
      workdir: as in ``generate.generate``.
      mode: ``'inpaint'`` (needs ``image`` and ``mask``), ``'sdedit'`` (``image`` and
        ``strength``) or ``'interpolate'``.
      num_samples: completions / edits of the image, or images along the interpolation (>= 2).
      seed: the key; interpolation runs between two noises x_T drawn from it.
      step, params: the checkpoint and parameter set, as in ``generate.generate``.
      image, mask: image files (see ``read_image`` and ``read_mask``).
      strength: SDEdit's strength in (0, 1].
      resample, jump: RePaint's resampling for ``inpaint``.
      sampler, num_steps, spacing, eta, variance: override the run's ``config.sampling``.
        Inpainting takes ``'ddpm'`` where the run's sampler is not an inpainting one;
        interpolation takes deterministic DDIM where the run's sampler is stochastic.

    Returns:
      ``generate.Samples`` (no trajectory) whose settings record the mode and its inputs.
    """
    diffusion.check_choice("edit mode", mode, MODES)
    trained = generate.resolve(workdir, step)
    if num_samples < (2 if mode == "interpolate" else 1):
        raise ValueError(f"num_samples must be >= {2 if mode == 'interpolate' else 1} for "
                         f"{mode}, got {num_samples}")
    needed = {"inpaint": ("image", "mask"), "sdedit": ("image", "strength"),
              "interpolate": ()}[mode]
    given = dict(image=image, mask=mask, strength=strength)
    missing = [name for name in needed if given[name] is None]
    extra = [name for name, value in given.items() if value is not None and name not in needed]
    if missing or extra:
        raise ValueError(f"{mode} needs {list(needed)}; missing {missing}, not used {extra}")
    config_sampler = trained.config.sampling.sampler
    if mode == "inpaint" and sampler is None and config_sampler not in editing.INPAINT_SAMPLERS:
        sampler = "ddpm"
    if mode == "interpolate":
        chosen = sampler or config_sampler
        chosen_eta = trained.config.sampling.get("eta", 0.0) if eta is None else eta
        if chosen not in sampling.DETERMINISTIC_SAMPLERS or (chosen == "ddim" and chosen_eta):
            if sampler is not None:
                raise ValueError(f"interpolate needs a deterministic sampler (ddim with eta 0, "
                                 f"dpmpp_2m or heun), got {sampler!r} with eta={chosen_eta}")
            sampler, eta = "ddim", 0.0
    s = run_config.sampling_settings(trained.config, sampler=sampler, num_steps=num_steps,
                                    spacing=spacing, eta=eta, variance=variance)
    if mode == "sdedit" and num_steps is None and s.get("num_steps") is not None:
        # The run's step count is for a whole chain; SDEdit's chain has round(strength T) steps.
        s["num_steps"] = min(s["num_steps"],
                             max(1, editing.sdedit_start(trained.schedule, strength)))
    shape = (num_samples, *trained.image_shape)
    inputs = {}
    if image is not None:
        inputs["image"] = jnp.broadcast_to(
            data.to_model_range(read_image(image, trained.image_shape)), shape)
    if mask is not None:
        inputs["mask"] = jnp.asarray(read_mask(mask, trained.image_shape))
        known = np.asarray(inputs["mask"]) == 1
        if known.all() or not known.any():
            raise ValueError(f"mask {os.fspath(mask)!r} is all "
                             f"{'white' if known.all() else 'black'}: nothing to "
                             f"{'fill in' if known.all() else 'keep'}")

    def run(p, key, inputs):
        f = train_lib.unconditional_denoiser(trained.model, p)
        if mode == "inpaint":
            s_inpaint = {k: v for k, v in s.items() if k != "sampler"}
            return sampling.inpaint(f, trained.schedule, key, inputs["image"], inputs["mask"],
                                    sampler=s["sampler"], resample=resample, jump=jump,
                                    **s_inpaint)
        if mode == "sdedit":
            return sampling.sdedit(f, trained.schedule, key, inputs["image"], strength=strength,
                                   **s)
        noise = jax.random.normal(jax.random.split(key)[0], (2, *trained.image_shape))
        x_T = sampling.slerp(noise[0], noise[1], jnp.linspace(0.0, 1.0, num_samples))
        return sampling.sample(f, trained.schedule, key, shape, x_T=x_T, **s)

    key = jax.random.key(seed)
    images = np.asarray(jax.jit(run)(trained.chosen_params(params), key, inputs))
    settings = dict(**generate.source_settings(trained), step=trained.step, seed=seed,
                    num_samples=num_samples, params=params,
                    mode=mode, image=image and os.fspath(image), mask=mask and os.fspath(mask),
                    strength=strength, **({"resample": resample, "jump": jump}
                                          if mode == "inpaint" else {}), **s)
    return generate.Samples(images, visualize.to_uint8(images), None, settings)
