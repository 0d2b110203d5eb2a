"""Test-session set-up, done before JAX is imported (also inherited by the CLI subprocesses).

8 simulated CPU devices, so sharding, pmap and shard_map run in-process. LLVM optimisation
level 0: the suite's programs are tiny and compile-bound, and this cuts XLA:CPU compile times
about 4x (e.g. 15 s -> 4 s for the tiny U-Net's init); numerics are unchanged. A compilation
cache for this session only, so the same train step built again (resume, the CLIs) compiles once.
"""

import os
import tempfile

os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ddpm_jax_test_jit_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0",
]).strip()

from ddpm_jax import xla_setup  # noqa: E402  (imports no JAX backend)

xla_setup.configure()  # the CLIs' flags, so in-process runs compile like the CLI subprocesses

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> pathlib.Path:
    """A tfds data dir with Fashion-MNIST prepared from Debian's IDX files (~20 s), shared by
    the input-pipeline, training and sampling tests. `make test` installs the Debian package."""
    from ddpm_jax.data import fashion_mnist

    assert (fashion_mnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), (
        "Fashion-MNIST IDX files missing: apt-get install dataset-fashion-mnist")
    data_dir = tmp_path_factory.mktemp("tfds")
    fashion_mnist.FashionMnistIdx(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_workdir(fashion_dir, tmp_path_factory):
    """The real train.py CLI on configs/test.py: 4 steps, checkpoints at 2 and 4, a preview."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train.py", "--config", "configs/test.py", "--workdir", str(workdir),
                     f"--config.data.data_dir={fashion_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
