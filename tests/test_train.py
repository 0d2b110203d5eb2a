"""Training: loss goes down, exact resume, device-count invariance, non-finite loss, the CLI."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import test as test_config
from ddpm_jax import data, generate, run_config, train_lib, train_loop
from ddpm_jax.checkpointing import Checkpointer

from conftest import ROOT


def make_config(fashion_dir, **training):
    config = test_config.get_config()
    config.data.data_dir = str(fashion_dir)
    config.training.sample_every = 0
    config.training.update(training)
    return config


@pytest.fixture(scope="module")
def setup(fashion_dir):
    """Model, schedule, optimizer, a first state and one fixed batch of the tiny config."""
    config = make_config(fashion_dir)
    model = train_lib.make_model(config, (28, 28, 1))
    optimizer = train_lib.make_optimizer(config)
    schedule = train_lib.make_schedule_from_config(config)
    state = jax.jit(lambda k: train_lib.create_train_state(model, optimizer, k, (28, 28, 1)))(
        jax.random.key(0))
    source = data.load_split("fashion_mnist", "train[:64]", data_dir=fashion_dir)
    batch = data.train_batch(source, seed=0, step=0, batch_size=8)
    step = train_lib.make_train_step(model, schedule, optimizer, config)
    return config, state, batch, step


def _trees_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loss_decreases_on_a_fixed_batch(setup):
    config, state, batch, step = setup
    step_fn = jax.jit(step)
    losses = []
    for _ in range(20):
        # The same key every step: the same t and noise, so the loss is comparable.
        state, metrics = step_fn(state.replace(step=jnp.zeros((), jnp.int32)), batch,
                                 jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.85 * losses[0], losses
    assert int(state.step) == 1


def test_device_count_does_not_change_the_result(setup):
    """8 devices with the batch sharded == 1 device on the same global batch and keys."""
    _, state, batch, step = setup
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train_lib.data_mesh(devices)
        rep, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        fn = jax.jit(step, in_shardings=(rep, sharded, rep), out_shardings=(rep, rep))
        s = state
        for _ in range(2):
            s, metrics = fn(s, batch, jax.random.key(3))
        results.append((s, metrics))
    (s1, m1), (s8, m8) = results
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("accum, num_devices", [(2, 4), (4, 2)])
def test_gradient_accumulation_equals_the_whole_batch(setup, accum, num_devices):
    """training.grad_accum_steps = A: A micro-batches of B / A (sharded over the devices) give the
    whole batch's loss, gradient norm and update to float rounding: every example keeps its t,
    noise and label drop. Accumulation lives inside one step, so no checkpoint can hold a
    partial one (resume stays exact by construction)."""
    config, state, batch, step = setup
    accum_config = ml_collections.ConfigDict(config.to_dict())
    accum_config.training.grad_accum_steps = accum
    model = train_lib.make_model(config, (28, 28, 1))
    accum_step = train_lib.make_train_step(model, train_lib.make_schedule_from_config(config),
                                           train_lib.make_optimizer(config), accum_config)
    mesh = train_lib.data_mesh(jax.devices()[:num_devices])
    run_config.validate(accum_config, mesh)
    rep, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    runs = []
    for fn in (jax.jit(step), jax.jit(accum_step, in_shardings=(rep, sharded, rep),
                                      out_shardings=(rep, rep))):
        s, metrics = state, []
        for _ in range(2):
            s, m = fn(s, batch, jax.random.key(3))
            metrics.append(m)
        runs.append((s, jax.device_get(metrics)))
    (whole, whole_metrics), (micro, micro_metrics) = runs
    for a, b in zip(whole_metrics, micro_metrics):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(micro)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grad_accum_steps_must_split_the_batch_over_the_devices(fashion_dir, tmp_path):
    config = make_config(fashion_dir, grad_accum_steps=2)  # 8 / 2 = 4 rows for 8 devices
    with pytest.raises(ValueError, match=r"training.batch_size=8 must be a multiple of "
                                         r"training.grad_accum_steps=2 times the device count 8"):
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_ema_warmup():
    assert float(train_lib.ema_decay_at(jnp.array(0), 0.9999, True)) == pytest.approx(0.1)
    assert float(train_lib.ema_decay_at(jnp.array(10**6), 0.9999, True)) == pytest.approx(0.9999)
    assert float(train_lib.ema_decay_at(jnp.array(0), 0.9999, False)) == pytest.approx(0.9999)


def test_learning_rate_schedules_match_their_closed_forms():
    config = test_config.get_config()
    config.optim.update(learning_rate=1e-3, warmup_steps=100)
    constant = train_lib.learning_rate_schedule(config)
    for step, expected in ((0, 0.0), (50, 5e-4), (100, 1e-3), (10_000, 1e-3)):
        np.testing.assert_allclose(constant(step), expected, rtol=1e-6)
    config.optim.update(decay_steps=1100, end_learning_rate=1e-5)
    cosine = train_lib.learning_rate_schedule(config)
    for step in (0, 50, 100, 350, 600, 1100, 5000):
        progress = min(max(step - 100, 0), 1000) / 1000
        expected = (step / 100 * 1e-3 if step < 100 else
                    1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * progress)))
        np.testing.assert_allclose(cosine(step), expected, rtol=1e-5)
    config.optim.decay_steps = 100
    with pytest.raises(ValueError, match="optim.decay_steps=100 must exceed optim.warmup_steps"):
        train_lib.learning_rate_schedule(config)
    del config.optim.decay_steps  # a run saved before the option existed: a constant rate
    np.testing.assert_allclose(train_lib.learning_rate_schedule(config)(10_000), 1e-3, rtol=1e-6)


def test_resume_is_bit_identical(trained_workdir, fashion_dir, tmp_path):
    """train.py's 4 straight steps == its step-2 checkpoint resumed to 4 (leaf by leaf, exact)."""
    workdir = tmp_path / "resumed"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("4", "*.jsonl"))
    resumed = train_lib.train_and_evaluate(make_config(fashion_dir, num_steps=4), str(workdir))
    assert int(resumed.step) == 4
    straight = generate.load_workdir(str(trained_workdir))
    assert _trees_equal((straight.params, straight.ema_params),
                        (resumed.params, resumed.ema_params))
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [3, 4]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(fashion_dir, tmp_path, monkeypatch):
    real_iterator = data.train_iterator

    def poisoned(source, *, start_step, **kw):
        for step, batch in enumerate(real_iterator(source, start_step=start_step, **kw),
                                     start_step + 1):
            if step == 3:
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch

    monkeypatch.setattr(data, "train_iterator", poisoned)
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3; stopping\. "
                                                 r"The last good checkpoint \(step 2\)"):
        train_lib.train_and_evaluate(make_config(fashion_dir, num_steps=4), workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2]


def _snapshot(workdir):
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(workdir.rglob("*"))}


def test_resume_refuses_a_changed_model_or_diffusion_and_writes_nothing(trained_workdir,
                                                                        fashion_dir, tmp_path):
    workdir = tmp_path / "changed"
    shutil.copytree(trained_workdir, workdir)
    before = _snapshot(workdir)
    config = make_config(fashion_dir, num_steps=6)
    config.model.base_channels = 16
    config.diffusion.num_timesteps = 30
    with pytest.raises(ValueError) as raised:
        train_lib.train_and_evaluate(config, workdir, allow_config_changes=True)
    assert str(raised.value) == (
        f"{workdir} holds checkpoints of another model, diffusion or classes; changed: "
        f"diffusion.num_timesteps: 20 -> 30, model.base_channels: 8 -> 16. Use a new workdir")
    config = make_config(fashion_dir, num_steps=6)
    config.data.image_size = 32
    with pytest.raises(ValueError, match=r"changed: data.image_size: None -> 32, "
                                         r"image_shape: \[28, 28, 1\] -> \[32, 32, 1\]\."):
        train_lib.train_and_evaluate(config, workdir)
    assert _snapshot(workdir) == before


def test_resume_with_a_changed_training_setup_needs_the_flag(trained_workdir, fashion_dir,
                                                            tmp_path):
    workdir = tmp_path / "lr"
    shutil.copytree(trained_workdir, workdir)
    before = _snapshot(workdir)
    config = make_config(fashion_dir, num_steps=4, log_every=2)  # bookkeeping: free to change
    config.optim.learning_rate = 5e-4
    with pytest.raises(ValueError, match=r"resuming .* with a changed training setup: "
                                         r"optim.learning_rate: 0.001 -> 0.0005\. Pass "
                                         r"--allow_config_changes to resume with it$"):
        train_lib.train_and_evaluate(config, workdir)
    assert _snapshot(workdir) == before
    state = train_lib.train_and_evaluate(config, workdir, allow_config_changes=True)
    assert int(state.step) == 4
    assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 5e-4


def test_num_classes_must_match_the_dataset(fashion_dir, tmp_path):
    config = make_config(fashion_dir)
    config.model.num_classes = 12
    with pytest.raises(ValueError, match="^config.model.num_classes=12 but the tfds dataset "
                                         "'fashion_mnist' split 'train.*' has 10 classes$"):
        train_lib.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def conditional_workdir(fashion_dir, tmp_path_factory):
    """A class-conditional run of 3 steps with previews every 2 steps and a log every 2."""
    workdir = tmp_path_factory.mktemp("conditional") / "run"
    config = make_config(fashion_dir, num_steps=3, log_every=2, sample_every=2,
                         checkpoint_every=2, num_preview_samples=8)
    config.model.num_classes = 10
    config.sampling.guidance_scale = 2.0
    train_lib.train_and_evaluate(config, workdir)
    return workdir, config


def test_a_conditional_run_previews_its_classes_and_resumes_past_a_preview(conditional_workdir):
    workdir, config = conditional_workdir
    assert sorted(os.listdir(workdir / "previews")) == ["step_2.png"]
    config.training.num_steps = 4
    train_lib.train_and_evaluate(config, workdir)  # resumed from step 3, a preview at step 4
    assert sorted(os.listdir(workdir / "previews")) == ["step_2.png", "step_4.png"]
    np.testing.assert_array_equal(run_config.preview_labels(12, 10),
                                  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


def test_a_conditional_preview_samples_the_labels_with_the_configs_guidance(conditional_workdir,
                                                                          monkeypatch):
    """The preview's denoiser is classifier-free guidance over the cycled labels, at the
    config's scale."""
    _, config = conditional_workdir
    seen = {}

    def recording(denoise_fn, labels, *, null_label, guidance_scale):
        seen.update(labels=np.asarray(labels), null_label=null_label, scale=guidance_scale)
        return lambda x, t: denoise_fn(x, t, labels)

    monkeypatch.setattr(train_lib.sampling, "classifier_free_guidance", recording)
    model = train_lib.make_model(config, (28, 28, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                               jnp.zeros((1,), jnp.int32), jnp.zeros((1,), int)))
    draw = train_lib.sample_fn(model, train_lib.make_schedule_from_config(config), config)
    jax.eval_shape(lambda p: draw(p, jax.random.key(0), (12, 28, 28, 1)), params["params"])
    np.testing.assert_array_equal(seen.pop("labels"), run_config.preview_labels(12, 10))
    assert seen == {"null_label": 10, "scale": 2.0}


def test_the_last_steps_are_logged_when_num_steps_is_not_a_multiple_of_log_every(
        conditional_workdir):
    workdir, _ = conditional_workdir
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [line["step"] for line in lines][:2] == [2, 3]  # step 3: the tail of the 3-step run
    assert np.isfinite(lines[1]["loss"])


def test_out_of_memory_is_one_line_naming_the_sizes(fashion_dir, tmp_path, monkeypatch):
    def exhausted(*args, **kwargs):
        def call(*args):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory allocating 26678061248 bytes.\n"
                "(a 25-line traceback follows)")
        return call

    monkeypatch.setattr(train_loop, "make_train_call", exhausted)
    with pytest.raises(MemoryError) as raised:
        train_lib.train_and_evaluate(make_config(fashion_dir), tmp_path / "run")
    message = str(raised.value)
    assert "\n" not in message and re.match(
        r"out of accelerator memory \(RESOURCE_EXHAUSTED\) training a U-Net of [1-9][\d,]+ "
        r"parameters \(model.base_channels=8, channel_mults=\(1, 2\), num_res_blocks=1\) on "
        r"training.batch_size=8 images of 28x28x1", message), message
    assert "lower the batch size, data.image_size or the model's size" in message


def test_attention_at_no_feature_map_height_is_refused(caplog):
    """fashion_mnist.py's attention at 7x7 exists at 28 pixels, not at 32; resuming only warns
    (the checkpoints' model is fixed)."""
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    assert run_config.feature_map_heights(config, 28) == [28, 14, 7]
    run_config.check_attention(config, 28, resuming=False)
    with pytest.raises(ValueError, match=r"^model.attn_resolutions=\(7,\): \[7\] match no "
                                         r"feature-map height of the U-Net at 32x32 \(heights "
                                         r"\[32, 16, 8\]\), so they would add no attention; use "
                                         r"heights from that list, or \(\) for none$"):
        run_config.check_attention(config, 32, resuming=False)
    run_config.check_attention(config, 32, resuming=True)
    assert "match no feature-map height" in caplog.text


@pytest.mark.parametrize("name, image_size", [
    ("default", 32), ("cifar10", 32), ("celeb_a64", 64), ("fashion_mnist", 28), ("mnist", 28),
    ("test", 28), ("folder", 32), ("folder", 64)])
def test_every_shipped_config_runs_at_its_image_size(name, image_size):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    run_config.check_attention(config, image_size, resuming=False)
    # Attention at a feature-map height (above), and training settings that run (steps_per_call
    # divides the intervals, ...).
    run_config.validate(config, train_lib.data_mesh(jax.devices()[:1]))


def test_bad_batch_size(fashion_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple of the "
                                         "device count 8"):
        train_lib.train_and_evaluate(make_config(fashion_dir, batch_size=12), str(tmp_path))


@pytest.mark.slow
def test_train_cli_writes_everything(trained_workdir):
    w = trained_workdir
    assert sorted(os.listdir(w / "checkpoints")) == ["2", "4"]
    assert json.load(open(w / "config.json"))["model"]["base_channels"] == 8
    assert [json.loads(l)["step"] for l in open(w / "metrics.jsonl")] == [1, 2, 3, 4]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(w / "tensorboard"))
    from PIL import Image
    assert Image.open(w / "previews" / "step_4.png").size == (230, 230)  # 2x2 of 4x 28 + pad 2


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(fashion_dir, tmp_path):
    workdir = tmp_path / "term"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/test.py", "--workdir", str(workdir),
         f"--config.data.data_dir={fashion_dir}", "--config.training.num_steps=100000",
         "--config.training.checkpoint_every=100000", "--config.training.sample_every=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.5)
    proc.terminate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
    assert len(steps) == 1 and steps[0] >= 3
    assert f"SIGTERM: saved step {steps[0]}" in out
