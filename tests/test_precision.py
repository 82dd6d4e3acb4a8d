"""Precision: what `auto` picks (hardware mocked), the per-part policy really placing each part in its
dtype, checkpoints moving between float32 and mixed models, flags, resume and evaluation in float32."""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from helpers import GRAY_INFO, tiny_config
from tfvamp import checkpointing
from tfvamp import flags as tflags
from tfvamp import precision
from tfvamp import run

FREY = (28, 20, 1)


def _gray(n, shape=FREY, seed=0):
    return ((np.random.default_rng(seed).integers(0, 256, size=(n,) + shape) + 0.5) / 256).astype(np.float32)


def _model(mode, model_name="hvae", shape=FREY, **kw):
    return tfvamp.build_model(model_name, "vampprior", shape, "discretized_logistic", num_components=5, z1_size=6,
                              z2_size=5, seed=1, compute_dtype=mode, **kw)


# ---- what auto picks -----------------------------------------------------------------------------
@pytest.mark.parametrize("hardware, mode, words", [
    ({"cpu": "Intel Xeon Platinum 8480+", "cpu_bf16": ["amx_bf16", "avx512_bf16"], "gpus": []}, "mixed",
     ["Xeon", "amx_bf16"]),
    ({"cpu": "AMD EPYC", "cpu_bf16": ["avx512_bf16"], "gpus": []}, "mixed", ["AMD EPYC", "avx512_bf16"]),
    ({"cpu": "Intel Core i7-8700", "cpu_bf16": [], "gpus": []}, "float32", ["i7-8700", "no bfloat16"]),
    ({"cpu": "AMD EPYC", "cpu_bf16": [], "gpus": [("NVIDIA A100-SXM4-40GB", (8, 0))]}, "mixed", ["A100", "8.0"]),
    # A GPU decides when there is one, even beside a CPU with bfloat16 units.
    ({"cpu": "AMD EPYC", "cpu_bf16": ["avx512_bf16"], "gpus": [("Tesla T4", (7, 5))]}, "float32", ["T4", "7.5"]),
])
def test_auto_picks_mixed_only_where_the_hardware_has_bfloat16_units(hardware, mode, words):
    choice = precision.resolve("auto", query=lambda: hardware, environ={})
    assert (choice.requested, choice.mode) == ("auto", mode)
    assert choice.device in choice.reason and all(w in choice.reason for w in words), choice.reason


def test_explicit_modes_and_the_environment_override_auto():
    hardware = {"cpu": "AMD EPYC", "cpu_bf16": ["avx512_bf16"], "gpus": []}
    for mode in ("float32", "bfloat16", "mixed", "bfloat16_except:output_layer"):
        choice = precision.resolve(mode, query=lambda: hardware, environ={})
        assert (choice.mode, choice.reason, choice.device) == (mode, "given explicitly", "AMD EPYC")
    pinned = precision.resolve("auto", query=lambda: hardware, environ={precision.AUTO_ENV: "float32"})
    assert pinned.mode == "float32" and precision.AUTO_ENV in pinned.reason
    for bad in ("float16", "bfloat16_except:decoder"):
        with pytest.raises(ValueError, match="compute_dtype"):
            precision.resolve(bad, query=lambda: hardware, environ={})


def test_cpu_info_reads_the_model_and_the_bfloat16_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f\n")
    assert precision.cpu_info(str(cpuinfo)) == ("Intel(R) Xeon(R) Platinum 8480+", {"avx512_bf16", "amx_bf16"})
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2 avx2\n")
    assert precision.cpu_info(str(cpuinfo)) == ("Old CPU", set())


# ---- the per-part policy -------------------------------------------------------------------------
def test_each_named_part_computes_in_float32_and_the_rest_in_bfloat16():
    model = _model("bfloat16_except:first_layer,variance_heads,output_layer")
    gated = lambda stack: [l for l in stack.layers if isinstance(l, tfvamp.layers.GatedDense)]  # noqa: E731
    assert [l.compute_dtype for l in gated(model.q_z2)] == ["float32", "bfloat16"]  # reads x, then hidden
    assert [l.compute_dtype for l in gated(model.q_z1_x)] == ["float32"]
    assert all(l.compute_dtype == "bfloat16" for s in (model.q_z1_joint, model.p_z1, model.p_x_joint)
               for l in gated(s))
    assert model.p_x_head.compute_dtype == "float32"
    assert (model.q_z2_head.mean_dtype, model.q_z2_head.logvar_dtype) == ("bfloat16", "float32")
    x = tf.constant(_gray(3))
    assert model.q_z2.layers[1](model.q_z2.layers[0](x)).dtype == tf.float32
    assert model.q_z2(x).dtype == tf.bfloat16 and model.p_x_joint(tf.zeros([2, 600])).dtype == tf.bfloat16
    mean, logvar = model.encode_top(x)
    assert mean.dtype == logvar.dtype == tf.float32
    assert all(w.dtype == "float32" for w in model.weights)
    mixed = _model("mixed")  # 8-bit data: the first layer stays float32
    for part, dtype in precision.MIXED_8BIT.items():
        assert mixed.precision.dtype(part) == dtype


def test_mixed_keeps_the_first_layer_float32_only_for_inputs_bfloat16_cannot_hold():
    """Binary pixels are exact in bfloat16, (k + 0.5) / 256 is not: 0.5 + 1.5/256 rounds."""
    gray = np.array([0.5 + 1.5 / 256], np.float32)
    assert tf.cast(tf.cast(gray, tf.bfloat16), tf.float32).numpy()[0] != gray[0]
    assert np.array_equal(tf.cast(tf.cast([0.0, 1.0], tf.bfloat16), tf.float32).numpy(), [0.0, 1.0])
    gated = lambda stack: [l for l in stack.layers if isinstance(l, tfvamp.layers.GatedDense)]  # noqa: E731
    binary = tfvamp.build_model("vae", "vampprior", (28, 28, 1), "bernoulli", num_components=5, z1_size=4, seed=1,
                                compute_dtype="mixed")
    grey = tfvamp.build_model("vae", "vampprior", FREY, "discretized_logistic", num_components=5, z1_size=4,
                              seed=1, compute_dtype="mixed")
    assert [l.compute_dtype for l in gated(binary.q_z)][:2] == ["bfloat16", "bfloat16"]
    assert [l.compute_dtype for l in gated(grey.q_z)][:2] == ["float32", "bfloat16"]
    assert binary.precision.dtype("first_layer") == "bfloat16" and grey.precision.dtype("first_layer") == "float32"
    for part in set(precision.PARTS) - {"first_layer"}:
        assert binary.precision.dtype(part) == grey.precision.dtype(part) == precision.MIXED[part]


def test_prior_encoder_in_float32_gives_the_float32_prior_exactly():
    """Part `prior_encoder`: the pseudo-inputs' pass of a bfloat16 model runs the same weights in
    float32, so the mixture equals the float32 model's bit for bit, while the data's pass differs."""
    exact, kept = _model("float32"), _model("bfloat16_except:prior_encoder")
    for a, b in zip(kept.weights, exact.weights):
        a.assign(b)
    np.testing.assert_array_equal(kept.prior().means.numpy(), exact.prior().means.numpy())
    np.testing.assert_array_equal(kept.prior().logvars.numpy(), exact.prior().logvars.numpy())
    x = _gray(3)
    assert np.abs(kept.encode_top(x)[0].numpy() - exact.encode_top(x)[0].numpy()).max() > 0
    rounded = _model("bfloat16_except:")
    for a, b in zip(rounded.weights, exact.weights):
        a.assign(b)
    assert np.abs(rounded.prior().means.numpy() - exact.prior().means.numpy()).max() > 0


def _kernel_gradients(model, x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model.loss_terms(x, noise_fn=tf.zeros)["loss"])
    grads = tape.gradient(loss, model.trainable_variables)
    # q_z2 also encodes the pseudo-inputs: its kernels' two gradients are summed in float32.
    return [g.numpy() for g, v in zip(grads, model.trainable_variables) if "gated_dense" in v.path
            and v.path.endswith("/kernel") and not v.path.startswith("q_z2/")]


def test_weight_gradients_part_keeps_float32_accumulation():
    """A bfloat16 matmul's weight gradient is rounded to bfloat16 (every entry representable);
    with `weight_gradients` in float32 it is a float32 matmul of the bfloat16 factors (not).
    (Layers used twice, like the top encoder, add their two gradients in float32 either way.)"""
    x = tf.constant(_gray(4))
    representable = lambda g: np.array_equal(g, g.astype(tf.bfloat16.as_numpy_dtype).astype(np.float32))  # noqa
    rounded, kept = _model("bfloat16_except:"), _model("bfloat16_except:weight_gradients")
    for a, b in zip(kept.weights, rounded.weights):
        a.assign(b)
    low, high = _kernel_gradients(rounded, x), _kernel_gradients(kept, x)
    assert all(representable(g) for g in low)
    assert not any(representable(g) for g in high)
    for a, b in zip(low, high):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * np.abs(b).max())


# ---- checkpoints and likelihoods across modes ----------------------------------------------------
@pytest.mark.parametrize("model_name", ["vae", "hvae", "convhvae"])
def test_float32_weights_restore_into_the_mixed_model_and_back(model_name, tmp_path):
    """Same variables (names, shapes, order, float32) in both modes; a float32 checkpoint restores
    into the mixed model and back. Seeded log-likelihoods (same importance samples) agree to 0.5%
    of |log p(x)|: bfloat16 keeps 8 significant bits (relative rounding <= 2^-9 per value), and
    the hidden activations' rounding errors partly cancel over each 300-unit layer; the heads,
    the output layer and every density are float32 in the mixed mode. (Measured here: at most
    0.2%; trained models in docs/benchmarks.md differ by less.)"""
    f32, mixed = _model("float32", model_name), _model("mixed", model_name)
    described = lambda m: [(re.sub(r"_\d+", "", w.path), w.shape, w.dtype) for w in m.weights]  # noqa: E731
    assert described(f32) == described(mixed)  # (layer names carry a per-process counter)
    path = tf.train.Checkpoint(model=f32).save(str(tmp_path / "f32" / "ckpt"))
    tf.train.Checkpoint(model=mixed).restore(path).assert_existing_objects_matched()
    for a, b in zip(mixed.weights, f32.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = _gray(4)
    ll32 = f32.log_likelihood(x, num_samples=50, seed=3).numpy()
    llmix = mixed.log_likelihood(x, num_samples=50, seed=3).numpy()
    np.testing.assert_allclose(llmix, ll32, rtol=5e-3)
    back = _model("float32", model_name)
    path = tf.train.Checkpoint(model=mixed).save(str(tmp_path / "mixed" / "ckpt"))
    tf.train.Checkpoint(model=back).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(back.log_likelihood(x, num_samples=50, seed=3).numpy(), ll32)


def test_get_config_holds_the_resolved_mode(monkeypatch):
    monkeypatch.setenv(precision.AUTO_ENV, "mixed")
    model = _model("auto", "vae")
    assert model.get_config()["compute_dtype"] == "mixed" and model.precision.mode == "mixed"
    rebuilt = type(model).from_config(model.get_config())
    assert [l.compute_dtype for l in rebuilt.q_z.layers[1:]] == [l.compute_dtype for l in model.q_z.layers[1:]]


# ---- flags, resume, evaluation -------------------------------------------------------------------
def test_flags_accept_auto_and_mixed_and_record_the_resolved_mode(tmp_path, monkeypatch):
    assert tflags.default_config().model.compute_dtype == "auto"
    monkeypatch.setenv(precision.AUTO_ENV, "mixed")
    config = tiny_config(tmp_path)
    assert config.model.compute_dtype == "mixed"
    assert config.precision["requested"] == "auto" and config.precision["mode"] == "mixed"
    assert tiny_config(tmp_path, compute_dtype="float32").precision["reason"] == "given explicitly"
    assert tflags.validate_config(config, info=GRAY_INFO).precision == config.precision  # kept
    with pytest.raises(ValueError, match="--compute_dtype"):
        tiny_config(tmp_path, compute_dtype="bfloat16_except:everything")


def test_a_resumed_run_keeps_its_compute_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.AUTO_ENV, "mixed")
    stored = tiny_config(tmp_path, compute_dtype="float32")
    checkpointing.save_config(str(tmp_path), stored)
    resumed = run.keep_run_precision(str(tmp_path), tiny_config(tmp_path))
    assert resumed.model.compute_dtype == "float32" and "resumed run" in resumed.precision["reason"]
    assert "Precision: float32 (--compute_dtype=auto" in run.describe_precision(resumed)
    explicit = run.keep_run_precision(str(tmp_path), tiny_config(tmp_path, compute_dtype="mixed"))
    assert explicit.model.compute_dtype == "mixed"


def test_evaluation_can_be_forced_to_float32(tmp_path):
    config = tiny_config(tmp_path, compute_dtype="mixed").replace(image_shape=tuple(FREY))
    model = checkpointing.model_from_config(config)
    checkpointing.save_config(str(tmp_path), config)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / checkpointing.BEST_DIR), 1).save()
    own, used = checkpointing.load_model(str(tmp_path))
    assert used.model.compute_dtype == "mixed" and own.precision.uses_bfloat16()
    exact, used = checkpointing.load_model(str(tmp_path), compute_dtype="float32")
    assert used.model.compute_dtype == "float32" and not exact.precision.uses_bfloat16()
    assert all(l.compute_dtype == "float32" for l in exact.q_z2.layers)
    with open(tmp_path / checkpointing.CONFIG_FILE) as f:
        assert json.load(f)["compute_dtype"] == "mixed"  # the run's record is untouched
    assert os.path.isdir(tmp_path / checkpointing.BEST_DIR)


def test_paired_difference_and_the_compare_script(tmp_path):
    """Mean and standard error of the per-image differences, by hand; the script reads two runs."""
    from tfvamp import evaluation
    rng = np.random.default_rng(0)
    base = rng.normal(-1800, 30, 200)
    other = base + rng.normal(0.5, 2.0, 200)
    result = evaluation.paired_difference(base, other)
    diff = other - base
    assert result["paired_difference"] == pytest.approx(diff.mean())
    assert result["paired_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(200))
    assert result["num_examples"] == 200 and result["other_better"] == pytest.approx(np.mean(diff > 0))
    with pytest.raises(ValueError, match="same test set"):
        evaluation.paired_difference(base, other[:-1])
    for name, lls, dtype in (("a", base, "float32"), ("b", other, "mixed")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"compute_dtype": dtype, "likelihood": "discretized_logistic", "input_shape": [28, 20, 1]}))
        np.savez(tmp_path / name / "eval_test.npz", log_likelihood=lls)
    import subprocess
    import sys
    from helpers import ROOT
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare_runs.py"), str(tmp_path / "a"),
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["paired_difference"] == pytest.approx(diff.mean())
    assert printed["other"]["compute_dtype"] == "mixed"
    assert printed["baseline"]["bits_per_dim"] == pytest.approx(-base.mean() / (560 * np.log(2)))


@pytest.mark.parametrize("mode", ["float32", "mixed"])
def test_one_encoder_pass_over_batch_and_pseudo_inputs_gives_the_same_terms(mode):
    """`encode_with_prior`: in bfloat16 modes one pass of the top encoder over [x; pseudo-inputs];
    row by row the same as two passes (bfloat16 matmuls of different heights may round alike or
    not: a tolerance of bfloat16's), and in float32 it is the two passes themselves."""
    model = _model(mode)
    x = tf.constant(_gray(3))
    encoded, prior = model.encode_with_prior(x)
    apart, apart_prior = model.encode_data(x), model.prior()
    tolerance = dict(rtol=0, atol=0) if mode == "float32" else dict(rtol=2e-2, atol=2e-2)
    for key in ("top_mean", "top_logvar", "x_features"):
        np.testing.assert_allclose(tf.cast(encoded[key], tf.float32).numpy(),
                                   tf.cast(apart[key], tf.float32).numpy(), **tolerance)
    np.testing.assert_allclose(prior.means.numpy(), apart_prior.means.numpy(), **tolerance)
    np.testing.assert_allclose(prior.logvars.numpy(), apart_prior.logvars.numpy(), **tolerance)


def test_the_console_line_names_the_parts_kept_in_float32():
    grey = tflags.default_config(compute_dtype="mixed", likelihood="discretized_logistic")
    assert "; in float32: first_layer, mean_heads, variance_heads, densities" in run.describe_precision(grey)
    binary = tflags.default_config(compute_dtype="mixed", likelihood="bernoulli")
    assert "; in float32: mean_heads, variance_heads, densities" in run.describe_precision(binary)
    assert "in float32:" not in run.describe_precision(tflags.default_config(compute_dtype="float32",
                                                                             likelihood="bernoulli"))
