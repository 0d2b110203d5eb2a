"""The U-Net: shapes, conditioning, parameter counts, errors."""

import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from ddpm_jax.models import UNet
from ddpm_jax.models.layers import timestep_embedding

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
            dropout=0.1, num_groups=4)


def _init(model, shape, labels=None):
    x = jnp.zeros(shape)
    t = jnp.zeros(shape[:1], jnp.int32)
    return jax.jit(model.init)(jax.random.key(0), x, t, labels)


def _random_params(model, shape, labels=None):
    """Random values for every parameter (numpy, so nothing compiles): the zero-initialised output
    conv and residual branches would otherwise hide the inputs that enter through them."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                               jnp.zeros(shape[:1], jnp.int32), labels))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32), shapes)


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (3, 12, 16, 3)])
def test_output_shape_jit_grad_finite(shape):
    model = UNet(**TINY)
    params = _random_params(model, shape)
    x = jax.random.normal(jax.random.key(2), shape)
    t = jnp.arange(shape[0]) * 7
    out = jax.jit(lambda p, x, t: model.apply(p, x, t))(params, x, t)
    assert out.shape == shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    loss = lambda p: jnp.mean(model.apply(p, x, t, train=True, rngs={"dropout": jax.random.key(3)}) ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_zero_initialised_head_and_out_channels():
    model = UNet(**TINY, out_channels=2)
    params = _init(model, (1, 8, 8, 1))
    out = model.apply(params, jnp.ones((1, 8, 8, 1)), jnp.array([3]))
    assert out.shape == (1, 8, 8, 2)
    np.testing.assert_array_equal(out, 0.0)


def test_time_conditioning_matters():
    model = UNet(**TINY)
    params = _random_params(model, (1, 8, 8, 1))
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (1, 8, 8, 1)), (2, 8, 8, 1))
    out = model.apply(params, x, jnp.array([1, 500]))
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3


def test_class_conditioning_and_null_label():
    model = UNet(**TINY, num_classes=10)
    params = _random_params(model, (1, 8, 8, 1), jnp.zeros((1,), jnp.int32))
    assert params["params"]["label_emb"]["embedding"].shape == (11, 32)
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (1, 8, 8, 1)), (3, 8, 8, 1))
    out = model.apply(params, x, jnp.array([5, 5, 5]), jnp.array([0, 3, 10]))  # 10 = null label
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
    assert float(jnp.abs(out[0] - out[2]).max()) > 1e-3 and np.all(np.isfinite(out))


def test_dropout_switch():
    model = UNet(**{**TINY, "dropout": 0.5})
    params = _random_params(model, (1, 8, 8, 1))
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([3])
    np.testing.assert_array_equal(model.apply(params, x, t), model.apply(params, x, t))
    a = model.apply(params, x, t, train=True, rngs={"dropout": jax.random.key(0)})
    b = model.apply(params, x, t, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, b)


def test_bfloat16_compute_keeps_float32_params():
    model = UNet(**TINY, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: _init(model, (1, 8, 8, 1)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    params = _random_params(model, (1, 8, 8, 1))
    assert model.apply(params, jnp.ones((1, 8, 8, 1)), jnp.array([3])).dtype == jnp.float32


def test_ho_cifar10_parameter_count():
    """The released DDPM CIFAR-10 checkpoint has 35,746,307 parameters."""
    model = UNet(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                 attn_resolutions=(16,), dropout=0.1)
    shapes = jax.eval_shape(lambda: _init(model, (1, 32, 32, 3)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 35_746_307


def test_timestep_embedding_formula():
    emb = timestep_embedding(jnp.array([0, 7]), 8)
    freqs = np.exp(-np.log(10000) / 3 * np.arange(4))
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(7 * freqs), np.cos(7 * freqs)]),
                               rtol=1e-5)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_bad_inputs():
    model = UNet(**TINY)
    with pytest.raises(ValueError, match=r"image size 9x9 is not divisible by 2 = 2\^\(levels - 1\)"):
        _init(model, (1, 9, 9, 1))
    with pytest.raises(ValueError, match="not divisible by num_groups=3"):
        _init(UNet(**{**TINY, "num_groups": 3}), (1, 8, 8, 1))
    with pytest.raises(ValueError, match="labels must be given exactly when num_classes is set"):
        _init(UNet(**TINY, num_classes=10), (1, 8, 8, 1))


def test_timesteps_must_be_one_per_image():
    model = UNet(**TINY)
    x = jnp.zeros((2, 8, 8, 1))
    for t in (jnp.array(3), jnp.array([1, 2, 3])):
        with pytest.raises(ValueError, match=r"UNet expects timesteps t of shape \[B\] = \[2\], "
                                             rf"got shape {re.escape(str(t.shape))}"):
            model.init(jax.random.key(0), x, t)


def test_labels_are_checked_with_one_line_errors():
    """The label array's shape always; its values whenever concrete (outside jit)."""
    model = UNet(**TINY, num_classes=3)
    labels = jnp.zeros((2,), jnp.int32)
    params = _random_params(model, (2, 8, 8, 1), labels)
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
    apply = lambda y: model.apply(params, x, t, jnp.asarray(y))
    assert np.all(np.isfinite(apply([0, 3])))  # 3 = num_classes: the null label
    for y, message in (([5, 0], r"labels hold 5, outside \[0, 3\]"),
                       ([-1, 0], r"labels hold -1, outside \[0, 3\]"),
                       ([0, 1, 2], r"labels must have shape \[B\] = \[2\], got shape \(3,\)"),
                       ([[0], [1]], r"labels must have shape \[B\] = \[2\], got shape \(2, 1\)"),
                       ([0.0, 1.0], "labels must be integers, got dtype float32")):
        with pytest.raises(ValueError, match=message):
            apply(y)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[2\]"):  # under jit too
        jax.jit(apply)(jnp.array([0, 1, 2]))
    # Under jit the values are traced: documented, not checked (a label past the table is NaN).
    assert np.all(np.isnan(jax.jit(apply)(jnp.array([5, 5]))))
    without_null = UNet(**TINY, num_classes=3, has_null_label=False)
    params = _random_params(without_null, (2, 8, 8, 1), labels)
    assert params["params"]["label_emb"]["embedding"].shape[0] == 3
    with pytest.raises(ValueError, match=r"labels hold 3, outside \[0, 2\]"):
        without_null.apply(params, x, t, jnp.array([0, 3]))


def test_unconditional_denoiser_is_the_null_label_or_refused():
    """train_lib.unconditional_denoiser (bits/dim, ODE bits/dim, editing): the null label on
    every row, for any batch; a model without a null label is refused in one line (before, it
    was fed a label past its table: NaN under jit)."""
    from ddpm_jax import train_lib
    model = UNet(**TINY, num_classes=3)
    params = _random_params(model, (2, 8, 8, 1), jnp.zeros((2,), jnp.int32))["params"]
    x, t = jnp.ones((4, 8, 8, 1)), jnp.arange(4)
    out = jax.jit(train_lib.unconditional_denoiser(model, params))(x, t)
    apply = jax.jit(lambda y: model.apply({"params": params}, x, t, y))
    np.testing.assert_allclose(out, apply(jnp.full((4,), 3)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, apply(jnp.zeros((4,), jnp.int32)), atol=1e-6)  # labels matter
    without_null = UNet(**TINY, num_classes=3, has_null_label=False)
    with pytest.raises(ValueError, match="class-conditional model has no null label"):
        train_lib.unconditional_denoiser(without_null, params)
