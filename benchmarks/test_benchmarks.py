"""Fast checks of the benchmark code (no timing, no compiling); collected by `make test`
through pyproject's testpaths, alone with `python -m pytest -q benchmarks`."""

import pytest

import run  # pytest puts this directory on sys.path
from common import MODELS, unet_fields
from profile_step import attribute, op_names


@pytest.mark.parametrize("config", sorted(MODELS))
def test_diffusers_model_has_our_parameter_count(config):
    pytest.importorskip("diffusers")
    import jax
    import jax.numpy as jnp
    from ddpm_jax.models import UNet
    from torch_bench import diffusers_unet

    image_shape, fields = unet_fields(config)
    shapes = jax.eval_shape(UNet(**fields).init, jax.random.key(0),
                            jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32))
    ours = sum(x.size for x in jax.tree.leaves(shapes))
    theirs = sum(p.numel() for p in diffusers_unet(config)[0].parameters())
    assert ours == theirs
    if config == "cifar10":
        assert ours == 35_746_307  # Ho et al.'s model


def test_suite_defaults_cover_every_config():
    for suite in run.SUITES:
        args = run.parse_args(["--suite", suite, "--configs", ",".join(MODELS)])
        assert set(args.batch_size) >= set(MODELS)
        if "sample_steps" in run.SUITES[suite]:
            assert set(args.sample_steps) >= set(MODELS)


def test_loop_suite_tables():
    efficiency = dict(kind="loop", mode="efficiency", config="tiny", batch_size=8, xla_flags="",
                      runs=[dict(steps_per_call=4, bare_steps_per_s=50.0, loop_steps_per_s=45.0,
                                 efficiency=0.9, compile_s=12.34)])
    startup = dict(kind="loop", mode="startup", config="small", batch_size=16, xla_flags="",
                   cache="warm", cache_dir="/tmp/x", first_step_s=7.25)
    text, problems = run.tables([efficiency, startup])
    assert problems == []
    assert "| tiny | 8 | 4 | 50.00 | 45.00 | **0.900** | 12.3 |" in text
    assert "| small | warm | 7.2 |" in text


def test_unknown_config_is_an_error(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--configs", "cifar100"])
    assert "unknown configs ['cifar100']" in capsys.readouterr().err


def test_tables_report_ratios_and_parameter_mismatches():
    jax_row = dict(kind="jax", config="small", batch_size=64, dtype="float32", xla_flags="",
                   params=1000, train_step_s=0.5, train_gflops=10.0, peak_gflops=100.0,
                   forward_s=0.1, sample_steps=100, sampler_s=10.5, sampler_overhead=1.05,
                   compile_timesteps=[10, 1000],
                   train_compile_s=20.0, forward_compile_s=5.0,
                   sampler_compile_s={"10": 4.0, "100": 4.5, "1000": 5.0}, peak_host_gb=1.0)
    pair = lambda ours, theirs, ratios: dict(ours_s=ours, theirs_s=theirs, ratio=ratios[1],
                                             ratio_min=ratios[0], ratio_max=ratios[2])
    compare_row = dict(kind="compare", config="small", batch_size=64, xla_flags=run.YNN_OFF,
                       params=1000, diffusers_params=1000, torch="2.x", threads=2,
                       train=pair(0.5, 1.0, (1.8, 2.0, 2.3)),
                       forward=pair(0.1, 0.3, (2.5, 3.0, 3.1)))
    text, problems = run.tables([jax_row, compare_row])
    assert problems == []
    assert "| **2.00** (1.80-2.30) |" in text and "| **3.00** (2.50-3.10) |" in text
    assert "| 2.000 | 1.000 |" in text  # train steps/s: ours, theirs
    assert "| 1.25 |" in text  # sampler compile T=1000 / T=10
    _, problems = run.tables([jax_row, dict(compare_row, diffusers_params=1200)])
    assert problems and "differ by more than 1%" in problems[0]
    _, problems = run.tables([jax_row, dict(kind="jax", config="cifar10", xla_flags="x",
                                            error="boom")])
    assert problems and "failed" in problems[0]


def test_tables_report_steps_per_call_and_the_step_parts():
    pair = lambda ours, theirs: dict(ours_s=ours, theirs_s=theirs, ratio=theirs / ours,
                                     ratio_min=theirs / ours, ratio_max=theirs / ours)
    compare_row = dict(kind="compare", config="small", batch_size=64, xla_flags="",
                       params=1000, diffusers_params=1000, torch="2.x", threads=2,
                       train=pair(0.8, 0.5), forward=pair(0.1, 0.1),
                       steps_per_call={"4": pair(2.4, 2.0)},
                       parts=[dict(name="demo step", **pair(0.8, 0.5)),
                              dict(name="no EMA update", ours_vs_demo=pair(0.8, 0.72),
                                   theirs_vs_demo=pair(0.5, 0.45), **pair(0.72, 0.45)),
                              dict(name="no donation", ours_vs_demo=pair(0.8, 0.84))])
    text, problems = run.tables([compare_row])
    assert problems == []
    assert "| small | 64 | 1 | 1.250 | 2.000 | **0.62** (0.62-0.62) |" in text
    assert "| small | 64 | 4 | 1.667 | 2.000 | **0.83** (0.83-0.83) |" in text
    assert "| small | 64 | demo step | 800 | 1 | 500 | 1 | **0.62** (0.62-0.62) |" in text
    assert ("| small | 64 | no EMA update | 720 | **0.90** (0.90-0.90) | 450 | **0.90** (0.90-0.90) "
            "| **0.62** (0.62-0.62) |") in text
    assert "| small | 64 | no donation | 840 | **1.05** (1.05-1.05) | - | - | - |" in text


def test_loop_suite_compiles_only_what_it_cannot_train():
    args = run.parse_args(["--suite", "loop", "--configs", "small,cifar10"])
    modes = [(p["config"], p["mode"]) for _, _, p in run.loop_jobs(args)]
    assert modes[:2] == [("small", "efficiency"), ("cifar10", "compile")]
    text, _ = run.tables([dict(kind="loop", mode="compile", config="cifar10", batch_size=16,
                               xla_flags="", runs=[dict(steps_per_call=4, compile_s=62.1)])])
    assert "| cifar10 | 16 | 4 | - | - | - | 62.1 |" in text


def test_paired_ratio_is_the_median_of_per_pair_ratios(monkeypatch):
    compare_bench = pytest.importorskip("compare_bench")
    # Their call takes twice ours, while the machine slows down 3x after the first pair; the
    # second pair runs theirs first.
    clock = iter([0, 1, 1, 3, 3, 9, 9, 12, 12, 15, 15, 21]).__next__

    def timed(fn):
        start = clock()
        return fn(), clock() - start

    monkeypatch.setattr(compare_bench, "timed", timed)
    result = compare_bench.paired(lambda: None, lambda: None, warmup=0, repeats=3)
    assert result["ratio"] == result["ratio_min"] == result["ratio_max"] == 2.0
    assert result["ours_s"] == 3 and result["theirs_s"] == 6


@pytest.mark.parametrize("op_name, expected", [
    ("jit(train_step)/jvp(UNet)/ResBlock_0/Conv_0/conv_general_dilated",
     ("forward", "convolution")),
    ("jit(train_step)/transpose(jvp(UNet))/ResBlock_5/GroupNormSwish_1/GroupNorm_0/reduce_sum",
     ("backward", "GroupNorm")),
    ("jit(train_step)/jvp(UNet)/mid_attn/bij,bjc->bic/dot_general",
     ("forward", "attention (QK^T, softmax, AV)")),
    ("jit(train_step)/jvp(UNet)/AttnBlock_0/q/dot_general", ("forward", "attention projections")),
    ("jit(train_step)/mul", ("update", "loss, optimizer, EMA")),
    ("", ("", "(no metadata: layout copies)")),
])
def test_attribute(op_name, expected):
    assert attribute(op_name) == expected


def test_op_names_reads_hlo_metadata():
    hlo = ('  %conv.1 = f32[2]{0} convolution(%a, %b), metadata={op_type="conv" '
           'op_name="jit(f)/jvp(UNet)/Conv_0/conv_general_dilated"}\n'
           '  ROOT %copy.2 = f32[2]{0} copy(%conv.1)\n')
    assert op_names(hlo) == {"conv.1": "jit(f)/jvp(UNet)/Conv_0/conv_general_dilated",
                             "copy.2": ""}
