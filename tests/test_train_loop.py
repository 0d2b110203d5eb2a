"""The training loop: K steps per call, its validation, the NaN guard, signals, kill -9 during a
save, the compilation cache and bfloat16 end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from ddpm_jax import compilation_cache, data, generate, run_config, train_lib, train_loop
from ddpm_jax.checkpointing import Checkpointer

from conftest import ROOT, run_cli
from test_train import _trees_equal as trees_equal, make_config


def state_template(config):
    model = train_lib.make_model(config, (28, 28, 1))
    optimizer = train_lib.make_optimizer(config)
    return jax.eval_shape(lambda: train_lib.create_train_state(
        model, optimizer, jax.random.key(0), (28, 28, 1)))


def test_steps_per_call_does_not_change_the_result(fashion_dir):
    """K = 2 and 4 give bit-identical parameters, EMA and optimizer state after 4 steps; K = 1
    the same to float rounding (the K unrolled steps compile as one program, which XLA may fuse
    differently from a single step's)."""
    config = make_config(fashion_dir)
    model = train_lib.make_model(config, (28, 28, 1))
    optimizer = train_lib.make_optimizer(config)
    step = train_lib.make_train_step(model, train_lib.make_schedule_from_config(config),
                                     optimizer, config)
    state = jax.jit(lambda k: train_lib.create_train_state(model, optimizer, k, (28, 28, 1)))(
        jax.random.key(0))
    source = data.load_split("fashion_mnist", "train[:64]", data_dir=fashion_dir)
    batches = [data.train_batch(source, seed=0, step=s, batch_size=8) for s in range(4)]
    key = jax.random.key(1)
    multi = jax.jit(train_loop.make_multi_step(step))
    results = {}
    for k in (1, 2, 4):
        results[k] = state
        for first in range(0, 4, k):
            stacked = {n: np.stack([b[n] for b in batches[first:first + k]]) for n in batches[0]}
            results[k], metrics = multi(results[k], stacked, key)
        assert metrics["loss"].shape == (k,)
        assert int(results[k].step) == 4
    assert trees_equal(results[2], results[4])
    for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[4])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_resume_with_steps_per_call(trained_workdir, fashion_dir, tmp_path):
    """train.py's 4 single steps == its step-2 checkpoint resumed to 4 with K = 2 (to float
    rounding: K = 1 runs without a scan); the metrics are one line per log_every steps,
    averaged. Resuming with the same K is bit-identical (test_train)."""
    workdir = tmp_path / "resumed"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("4", "*.jsonl"))
    resumed = train_lib.train_and_evaluate(
        make_config(fashion_dir, num_steps=4, steps_per_call=2, log_every=2), str(workdir))
    straight = generate.load_workdir(str(trained_workdir))
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves((straight.params, straight.ema_params)),
                    jax.tree.leaves((resumed.params, resumed.ema_params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        restored = ckpt.restore(resumed)
    assert trees_equal(restored.opt_state, resumed.opt_state)
    lines = [json.loads(l) for l in open(trained_workdir / "metrics.jsonl")]
    resumed_lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [l["step"] for l in resumed_lines] == [4]
    assert resumed_lines[0]["loss"] == pytest.approx(np.mean([l["loss"] for l in lines[2:4]]),
                                                     rel=1e-5)


@pytest.mark.parametrize("field, value", [("log_every", 3), ("checkpoint_every", 2),
                                          ("sample_every", 6), ("num_steps", 10)])
def test_intervals_must_be_multiples_of_steps_per_call(fashion_dir, field, value):
    config = make_config(fashion_dir, num_steps=8, log_every=4, checkpoint_every=4,
                         steps_per_call=4)
    config.training[field] = value
    with pytest.raises(ValueError, match=rf"training\.{field}={value} must be a multiple of "
                                         r"training\.steps_per_call=4"):
        run_config.validate(config, train_lib.data_mesh())


def test_resume_step_must_be_a_multiple_of_steps_per_call(trained_workdir, fashion_dir,
                                                           tmp_path):
    workdir = tmp_path / "misaligned"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("4", "*.jsonl"))
    config = make_config(fashion_dir, num_steps=8, steps_per_call=4, log_every=4,
                         checkpoint_every=4)
    saved_config = (workdir / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"the checkpoint's step 2 is not a multiple of "
                                         r"training\.steps_per_call=4"):
        train_lib.train_and_evaluate(config, str(workdir))
    assert (workdir / "config.json").read_bytes() == saved_config  # refused before any write


def poison_step(monkeypatch, bad_step, action):
    """Makes the input pipeline call ``action(batch)`` on the batch of ``bad_step``."""
    real_iterator = data.train_iterator

    def iterator(source, *, start_step, **kw):
        for step, batch in enumerate(real_iterator(source, start_step=start_step, **kw),
                                     start_step + 1):
            yield action(batch) if step == bad_step else batch

    monkeypatch.setattr(data, "train_iterator", iterator)


def test_non_finite_loss_inside_a_call_is_named(fashion_dir, tmp_path, monkeypatch):
    """K = 2, logs every 4: the NaN of step 3 is found before the save of step 4, which is
    never written."""
    poison_step(monkeypatch, 3, lambda b: {**b, "image": np.full_like(b["image"], np.nan)})
    workdir = str(tmp_path / "nan")
    config = make_config(fashion_dir, num_steps=8, steps_per_call=2, log_every=4,
                         checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3; stopping\. "
                                                 r"The last good checkpoint \(step 2\)"):
        train_lib.train_and_evaluate(config, workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2]
        state = ckpt.restore(state_template(config))
    assert bool(train_loop.tree_all_finite(state))


def test_signal_on_a_preview_step_saves_and_skips_the_preview(fashion_dir, tmp_path,
                                                             monkeypatch):
    def signal_self(batch):
        os.kill(os.getpid(), signal.SIGTERM)
        return batch

    poison_step(monkeypatch, 2, signal_self)
    workdir = tmp_path / "signalled"
    state = train_lib.train_and_evaluate(
        make_config(fashion_dir, num_steps=1000, sample_every=1, checkpoint_every=1000,
                    log_every=1000),
        str(workdir))
    stopped = int(state.step)
    assert 2 <= stopped < 10
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [stopped]
    previews = sorted(os.listdir(workdir / "previews"))
    assert previews == sorted(f"step_{s}.png" for s in range(1, stopped))
    # The steps since the last log never run again: their mean is logged at the stop.
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [stopped] and np.isfinite(lines[0]["loss"])


# Runs train.py's loop with orbax's commit of step 3 (the rename of its temporary directory)
# replaced by a marker file and a wait, so the parent can kill -9 it in the middle of that save.
KILLED_DURING_SAVE = textwrap.dedent("""
    import asyncio, os, sys
    import orbax.checkpoint as ocp
    from configs import test as test_config
    from ddpm_jax import train_lib

    marker, workdir, data_dir, async_save = sys.argv[1:]
    commit = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if os.path.basename(str(self.get_final())) == "3":
            open(marker, "w").close()
            await asyncio.sleep(3600)
        await commit(self)

    ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = finalize
    config = test_config.get_config()
    config.data.data_dir = data_dir
    config.training.update(sample_every=0, num_steps=4, checkpoint_every=1,
                           async_checkpoints=async_save == "1")
    train_lib.train_and_evaluate(config, workdir)
""")


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True])
def test_kill_during_a_save_keeps_the_previous_checkpoint(trained_workdir, fashion_dir, tmp_path,
                                                          async_save):
    """kill -9 while step 3 is being committed (async: while training goes on to step 4 and its
    save waits for step 3's): steps 1 and 2 stay restorable and the resumed run is bit-identical
    to train.py's uninterrupted one."""
    workdir, marker = tmp_path / "killed", tmp_path / "saving"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_DURING_SAVE, str(marker), str(workdir), str(fashion_dir),
         str(int(async_save))],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the save of step 3 never started"
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    names = os.listdir(workdir / "checkpoints")
    assert any(n.startswith("3.orbax-checkpoint-tmp") for n in names), names
    config = make_config(fashion_dir, num_steps=4, checkpoint_every=1,
                         async_checkpoints=async_save)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        assert int(ckpt.restore(state_template(config)).step) == 2
    resumed = train_lib.train_and_evaluate(config, str(workdir))
    straight = generate.load_workdir(str(trained_workdir))
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves((straight.params, straight.ema_params)),
                    jax.tree.leaves((resumed.params, resumed.ema_params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(fashion_dir, tmp_path):
    from test_multiprocess import finish, training, two_processes

    workdir = tmp_path / "term"
    procs = two_processes(training(workdir, fashion_dir, "--config.training.num_steps=100000",
                                   "--config.training.checkpoint_every=100000"))
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("training did not start: " + procs[0].communicate()[1][-3000:])
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    outputs = finish(procs, timeout=300)
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
    assert len(steps) == 1 and steps[0] >= 3
    assert f"SIGTERM: saved step {steps[0]}" in outputs[1]
    assert f"a stop request on another process: saved step {steps[0]}" in outputs[0]


@pytest.mark.slow
def test_compilation_cache_flags(trained_workdir, tmp_path):
    """sample.py fills --compilation_cache_dir; with --nocompilation_cache it writes nothing."""
    sample = ["sample.py", "--workdir", str(trained_workdir), "--num_samples", "2",
              "--sampler", "ddim", "--num_steps", "2", "--out", str(tmp_path / "samples")]
    on, off = tmp_path / "cache_on", tmp_path / "cache_off"
    result = run_cli(*sample, f"--compilation_cache_dir={on}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(os.listdir(on)) > 0
    result = run_cli(*sample, f"--compilation_cache_dir={off}", "--nocompilation_cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not off.exists() or not os.listdir(off)


def test_compilation_cache_default_dir(monkeypatch, tmp_path):
    """$JAX_COMPILATION_CACHE_DIR wins; else the cache follows $XDG_CACHE_HOME, else ~/.cache."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_dir() == str(tmp_path / "xdg/ddpm_jax/jax_compilation_cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.default_dir() == str(
        tmp_path / "home/.cache/ddpm_jax/jax_compilation_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compilation_cache.default_dir() == str(tmp_path / "jax")


def fixed_batch_losses(config, batch, num_steps):
    """Losses of ``num_steps`` updates on one batch with the same key (the same t and noise)."""
    model = train_lib.make_model(config, (28, 28, 1))
    optimizer = train_lib.make_optimizer(config)
    state = jax.jit(lambda k: train_lib.create_train_state(model, optimizer, k, (28, 28, 1)))(
        jax.random.key(0))
    step = jax.jit(train_lib.make_train_step(model, train_lib.make_schedule_from_config(config),
                                             optimizer, config))
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state.replace(step=jnp.zeros((), jnp.int32)), batch,
                              jax.random.key(1))
        losses.append(metrics["loss"])
    assert all(loss.dtype == jnp.float32 for loss in losses)
    return np.array(losses)


def test_bfloat16_end_to_end(fashion_dir, tmp_path):
    """bfloat16 compute learns like float32 on a fixed batch (with a float32 loss); a bfloat16
    run of the loop keeps float32 parameters and EMA, and its checkpoint round-trips exactly."""
    source = data.load_split("fashion_mnist", "train[:64]", data_dir=fashion_dir)
    batch = data.train_batch(source, seed=0, step=0, batch_size=8)
    config = make_config(fashion_dir, num_steps=4, checkpoint_every=4, log_every=4)
    f32 = fixed_batch_losses(config, batch, 20)
    config.model.dtype = "bfloat16"
    bf16 = fixed_batch_losses(config, batch, 20)
    assert np.all(np.isfinite(bf16)), bf16
    assert bf16[-1] / bf16[0] < 0.85 and abs(bf16[-1] / bf16[0] - f32[-1] / f32[0]) < 0.1, (
        bf16, f32)

    state = train_lib.train_and_evaluate(config, str(tmp_path / "bf16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.ema_params)))
    with Checkpointer(os.path.join(tmp_path / "bf16", "checkpoints")) as ckpt:
        assert trees_equal(ckpt.restore(state_template(config)), state)
