"""Two local processes on JAX's distributed runtime (gloo over 127.0.0.1) train, sample and
evaluate like one."""

import inspect
import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import jax

from conftest import ROOT
from ddpm_jax import data, evaluation, generate, train_lib
from test_train import make_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A free port for process 0's coordinator, below the kernel's ephemeral range.

    A port from ``bind(0)`` is an ephemeral one: between closing it here and the coordinator
    binding it seconds later (after importing JAX), any outgoing connection may take it as its
    source port, including process 1's own retries to reach the not-yet-listening coordinator
    (a TCP self-connect), and process 0 then fails to bind. Outgoing connections never use a
    port below the ephemeral range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except OSError:  # not Linux: take the kernel's choice
        ephemeral_low = None
    candidates = random.Random().sample(range(20000, ephemeral_low), 100) if ephemeral_low and \
        ephemeral_low > 20100 else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port for the coordinator")


def training(workdir, fashion_dir, *extra):
    return ["train.py", "--config", "configs/test.py", "--workdir", str(workdir),
            f"--config.data.data_dir={fashion_dir}", "--config.training.sample_every=0", *extra]


def launch(args, *, devices, process_id=None, num_processes=None, port=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0"}
    args = [sys.executable, *args]
    if process_id is not None:
        args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                 f"--process_id={process_id}", "--heartbeat_timeout=10"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def two_processes(args):
    port = free_port()
    return [launch(args, devices=2, process_id=i, num_processes=2, port=port) for i in range(2)]


def finish(procs, timeout=400):
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def test_two_processes_match_one_process_with_as_many_devices(fashion_dir, tmp_path):
    """2 processes x 2 devices (train.py) vs this process on a mesh of 4 devices: same global
    batch, seed and params."""
    finish(two_processes(training(tmp_path / "multi", fashion_dir)))
    single = train_lib.train_and_evaluate(make_config(fashion_dir), str(tmp_path / "single"),
                                          mesh=train_lib.data_mesh(jax.devices()[:4]))
    multi = generate.load_workdir(str(tmp_path / "multi"))
    assert multi.step == int(single.step) == 4
    for a, b in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # only process 0 writes logs


def test_two_processes_sample_and_evaluate_like_one(trained_workdir, fashion_dir, tmp_path):
    """sample.py and evaluate.py split each batch over 2 processes x 2 devices; process 0 writes
    what this process (8 devices) computes alone."""
    out = tmp_path / "samples"
    printed = finish(two_processes(
        ["sample.py", "--workdir", str(trained_workdir), "--out", str(out), "--num_samples", "8",
         "--seed", "5", "--sampler", "ddim", "--num_steps", "5"]))
    paths = [[line for line in out_text.splitlines() if line.startswith("/")]
             for out_text in printed]
    assert paths == [[str(out / n) for n in ("samples.png", "samples.npz",
                                             "sample_settings.json")], []]  # process 0 writes
    trained = generate.load_workdir(str(trained_workdir))
    alone = generate.generate(trained, num_samples=8, seed=5, sampler="ddim", num_steps=5)
    np.testing.assert_allclose(np.load(out / "samples.npz")["samples"], alone.images, atol=1e-5)

    metrics = tmp_path / "metrics.json"
    finish(two_processes(
        ["evaluate.py", "--workdir", str(trained_workdir), "--metrics", "bpd", "--out",
         str(metrics), "--bpd_examples", "12", "--bpd_batch_size", "8"]))
    test_split = data.load_split("fashion_mnist", "test", data_dir=fashion_dir)
    expected = evaluation.bits_per_dim(trained, test_split, batch_size=8, num_examples=12)
    bpd = json.loads(metrics.read_text())["bpd"]
    assert bpd["num_examples"] == 12
    np.testing.assert_allclose(bpd["bpd"], expected["bpd"], rtol=1e-5)
    np.testing.assert_allclose(bpd["bpd_stderr"], expected["bpd_stderr"], rtol=1e-4)


def complete_steps(workdir) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def test_killed_peer_fails_fast_and_both_resume(fashion_dir, tmp_path):
    workdir = tmp_path / "kill"
    procs = two_processes(training(workdir, fashion_dir, "--config.training.num_steps=1000",
                                   "--config.training.checkpoint_every=2"))
    deadline = time.time() + 300
    # Any complete step, not step 2: max_to_keep=3 deletes step 2 once step 8 is saved, which can
    # happen between two polls; the loop then waited until process 0 finished all 1000 steps
    # and reported it as having "exited early" (the flake seen once).
    while not complete_steps(workdir):
        if time.time() > deadline or procs[0].poll() is not None:
            for p in procs:
                p.kill()
            pytest.fail(f"training did not start (process 0's exit code {procs[0].poll()}): "
                        + procs[0].communicate()[1][-3000:])
        time.sleep(0.5)
    procs[1].kill()
    start = time.time()
    _, err = procs[0].communicate(timeout=120)  # bounded: the heartbeat timeout is 10 s
    assert procs[0].returncode != 0
    assert time.time() - start < 120
    for p in procs:
        p.wait()
    resumed_from = complete_steps(workdir)[-1]
    finish(two_processes(training(workdir, fashion_dir,
                                  f"--config.training.num_steps={resumed_from + 2}")))
    assert generate.load_workdir(str(workdir)).step == resumed_from + 2


def pixel_moments(images):
    """A tiny feature network: each image's per-channel mean and std [N, 2C]."""
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=-1)


REFERENCE_DRIVER = '''
import json
import numpy as np
from absl import app, flags
import jax
from ddpm_jax import distributed, evaluation

flags.DEFINE_string("cache_dir", None, "each process's cache is <cache_dir>/p<index>/ref.npz")
flags.DEFINE_string("data_dir", None, "tfds data dir")


def main(argv):
    distributed.initialize_from_flags()
    reference = evaluation.reference_statistics(
        evaluation.FeatureFunction("pixel_moments", pixel_moments, batch_size=8),
        dataset="fashion_mnist", split="test[:16]", data_dir=flags.FLAGS.data_dir,
        cache=f"{flags.FLAGS.cache_dir}/p{jax.process_index()}/ref.npz")
    print(json.dumps(reference.mu.tolist()))


''' + inspect.getsource(pixel_moments) + "\n\napp.run(main)\n"


def test_reference_cache_on_one_host_only_does_not_deadlock(fashion_dir, tmp_path):
    """Only process 0 has the reference statistics cached (the cache is host-local): every process
    still takes the same path through load_split's cross-process barrier, and both get the
    statistics (before the fix process 0 returned its cache hit and process 1 waited at the
    barrier for hours)."""
    driver = tmp_path / "reference_driver.py"
    driver.write_text(REFERENCE_DRIVER)
    cached = evaluation.reference_statistics(
        evaluation.FeatureFunction("pixel_moments", pixel_moments, batch_size=8),
        dataset="fashion_mnist", split="test[:16]", data_dir=str(fashion_dir),
        cache=str(tmp_path / "p0" / "ref.npz"))
    assert not (tmp_path / "p1").exists()
    procs = two_processes([str(driver), f"--cache_dir={tmp_path}", f"--data_dir={fashion_dir}"])
    try:
        printed = finish(procs, timeout=90)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the processes deadlocked on a cache present on process 0 only")
    for out in printed:
        np.testing.assert_allclose(json.loads(out.strip().splitlines()[-1]), cached.mu,
                                   rtol=1e-6)
