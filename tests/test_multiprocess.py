"""Two local processes on JAX's distributed runtime (gloo over 127.0.0.1) train like one."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import jax

from conftest import ROOT
from ddpm_jax import generate

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, fashion_dir, *, devices, process_id=None, num_processes=None, port=None,
           extra=()):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0"}
    args = [sys.executable, "train.py", "--config", "configs/test.py", "--workdir", str(workdir),
            f"--config.data.data_dir={fashion_dir}", "--config.training.sample_every=0", *extra]
    if process_id is not None:
        args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                 f"--process_id={process_id}", "--heartbeat_timeout=10"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=400):
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]


def test_two_processes_match_one_process_with_as_many_devices(fashion_dir, tmp_path):
    """2 processes x 2 devices vs 1 process x 4 devices: same global batch, seed and params."""
    port = free_port()
    finish([launch(tmp_path / "multi", fashion_dir, devices=2, process_id=i, num_processes=2,
                   port=port) for i in range(2)])
    finish([launch(tmp_path / "single", fashion_dir, devices=4)])
    multi = generate.load_workdir(str(tmp_path / "multi"))
    single = generate.load_workdir(str(tmp_path / "single"))
    assert multi.step == single.step == 4
    for a, b in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # only process 0 writes logs


def test_killed_peer_fails_fast_and_both_resume(fashion_dir, tmp_path):
    workdir = tmp_path / "kill"
    port = free_port()
    long_run = ["--config.training.num_steps=1000", "--config.training.checkpoint_every=2"]
    procs = [launch(workdir, fashion_dir, devices=2, process_id=i, num_processes=2, port=port,
                    extra=long_run) for i in range(2)]
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "2").exists():
        if time.time() > deadline or procs[0].poll() is not None:
            for p in procs:
                p.kill()
            pytest.fail("training did not start: " + procs[0].communicate()[1][-3000:])
        time.sleep(0.5)
    procs[1].kill()
    start = time.time()
    _, err = procs[0].communicate(timeout=120)  # bounded: the heartbeat timeout is 10 s
    assert procs[0].returncode != 0
    assert time.time() - start < 120
    for p in procs:
        p.wait()
    resumed_from = max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    port = free_port()
    finish([launch(workdir, fashion_dir, devices=2, process_id=i, num_processes=2, port=port,
                   extra=["--config.training.num_steps=" + str(resumed_from + 2)])
            for i in range(2)])
    assert generate.load_workdir(str(workdir)).step == resumed_from + 2
