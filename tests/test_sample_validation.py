"""sample.py and generate refuse bad sampling arguments before sampling, in one line."""

import pytest

from conftest import run_cli
from ddpm_jax import generate


@pytest.fixture(scope="module")
def trained(trained_workdir):
    return generate.load_workdir(str(trained_workdir))


def test_generate_refuses_batch_size_zero_and_eta_outside_0_1(trained):
    with pytest.raises(ValueError, match="^batch_size=0 must be a positive multiple of the "
                                         "device count 8$"):
        generate.generate(trained, num_samples=8, batch_size=0)
    with pytest.raises(ValueError, match=r"^eta=1.5 must be in \[0, 1\]"):
        generate.generate(trained, num_samples=8, sampler="ddim", num_steps=2, eta=1.5)


@pytest.mark.parametrize("flag,value,message", [
    ("--eta", "-0.5", "flag --eta=-0.5: -0.5 is not a number in the range [0.0, 1.0]"),
    ("--trajectory_samples", "0", "flag --trajectory_samples=0: 0 is not a positive integer"),
])
def test_sample_cli_refuses_bad_flags_before_loading(trained_workdir, flag, value, message):
    result = run_cli("sample.py", "--workdir", str(trained_workdir), "--trajectory", flag, value)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"FATAL Flags parsing error: {message}" in result.stderr
