"""Evaluation: IS log-likelihood vs ELBO, bits/dim, active units, pseudo-input samples, pictures."""
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from helpers import train_briefly
from tfvamp import checkpointing
from tfvamp import evaluation
from tfvamp import evaluation_writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)


def _prototype(k):
    """One of four 8x8 binary patterns: horizontal band, vertical band, stripes, block."""
    p = np.zeros(SHAPE, np.float32)
    if k == 0:
        p[2:6, :, 0] = 1
    elif k == 1:
        p[:, 2:6, 0] = 1
    elif k == 2:
        p[::2, :, 0] = 1
    else:
        p[1:7, 1:7, 0] = 1
    return p


def _binary_data(n, seed=0):
    """The four prototypes with 5% of pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = np.stack([_prototype(k) for k in range(4)])
    x = protos[rng.integers(0, 4, n)]
    return np.where(rng.random(x.shape) < 0.05, 1.0 - x, x).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return _binary_data(512)


@pytest.fixture(scope="module")
def trained(data):
    """A VAE and an HVAE with VampPriors, trained a few steps on the synthetic binary data."""
    return {
        "vae": train_briefly(tfvamp.build_model("vae", "vampprior", SHAPE, "bernoulli", num_components=8,
                                         z1_size=4, seed=1), data),
        "hvae": train_briefly(tfvamp.build_model("hvae", "vampprior", SHAPE, "bernoulli", num_components=8,
                                          z1_size=4, z2_size=3, seed=2), data),
    }


def _dataset(x, batch=16):
    return tf.data.Dataset.from_tensor_slices(x).batch(batch)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_evaluate_summary(trained, data, name):
    """The summary against the test's own computation: its own batches through the estimator,
    seeded as documented (batch i draws from seed + i), NumPy's mean, standard error and
    active-unit variances of the posterior means."""
    model = trained[name]
    x = data[:40]  # 16 + 16 + 8: a ragged last batch
    summary, per_example = evaluation.evaluate(model, _dataset(x), num_samples=20, seed=5, progress=False)
    expected = np.concatenate([model.log_likelihood(x[16 * i:16 * (i + 1)], num_samples=20, seed=5 + i).numpy()
                               for i in range(3)])
    assert per_example["log_likelihood"].dtype == np.float64
    np.testing.assert_allclose(per_example["log_likelihood"], expected, rtol=1e-12)
    assert summary["log_likelihood"] == pytest.approx(float(np.mean(expected)), rel=1e-12)
    assert summary["log_likelihood_sem"] == pytest.approx(float(np.std(expected, ddof=1) / np.sqrt(40)), rel=1e-9)
    assert summary["num_examples"] == 40 and summary["num_samples"] == 20
    assert per_example["elbo"].shape == (40,)
    assert summary["elbo"] == pytest.approx(-(summary["reconstruction"] + summary["kl"]), rel=1e-5)
    assert summary["log_likelihood"] > summary["elbo"]
    assert "bits_per_dim" not in summary  # binary data are reported in nats
    codes = model.encode(x)
    assert summary["active_units"] == {
        layer: int(np.sum(np.var(codes[f"{layer}_mean"].numpy().astype(np.float64), 0, ddof=1) > 0.01))
        for layer in model.latent_sizes}
    json.dumps(summary)  # JSON-able as it is


def test_bits_per_dim_for_grey_data():
    model = tfvamp.build_model("vae", "standard", SHAPE, "discretized_logistic", z1_size=3, seed=4)
    rng = np.random.default_rng(3)
    x = ((np.floor(rng.random((24,) + SHAPE) * 256) + 0.5) / 256).astype(np.float32)
    summary, per_example = evaluation.evaluate(model, _dataset(x, 12), num_samples=10, progress=False)
    nats = per_example["log_likelihood"].mean()
    assert summary["log_likelihood"] == pytest.approx(nats)
    dims = int(np.prod(SHAPE))
    assert summary["bits_per_dim"] == pytest.approx(-nats / (dims * math.log(2.0)), rel=1e-12)
    assert summary["bits_per_dim"] > 0
    assert summary["elbo_bits_per_dim"] == pytest.approx(-summary["elbo"] / (dims * math.log(2.0)), rel=1e-9)


@pytest.mark.parametrize("name", ["vae", "hvae"])
def test_importance_sampling_bounds_elbo_and_tightens(trained, data, name):
    """IS >= ELBO on average, and the spread of repeated estimates shrinks as S grows."""
    model = trained[name]
    x = tf.constant(data[:32])
    repeats = 8
    elbo = np.mean([-model.loss_terms(x)["loss"].numpy() for _ in range(repeats)], 0)  # [B]
    spread, means = {}, {}
    for s in (1, 10, 100):
        estimates = np.stack([model.log_likelihood(x, num_samples=s).numpy() for _ in range(repeats)])
        spread[s] = estimates.std(0, ddof=1).mean()  # per-example spread over repeats, averaged
        means[s] = estimates.mean()
    # S = 1 is a single-sample ELBO: the same expectation as the ELBO.
    assert means[1] == pytest.approx(elbo.mean(), abs=3 * spread[1] / math.sqrt(repeats * 32) + 0.5)
    assert means[100] >= elbo.mean()
    assert means[100] >= means[10] - 0.05 >= means[1] - 0.1  # the bound tightens with S (on average)
    assert spread[100] < spread[10] < spread[1]
    assert spread[100] < 0.5 * spread[1]


def _zero_mean_columns(head, columns, gain=4.0):
    """Zeroes the given mean columns of a GaussianHead's kernel (those means then ignore the
    input) and scales the other mean columns by `gain`, so that they are clearly active."""
    kernel = head.kernel.numpy()
    kernel[:, :head.latent_size] *= gain
    kernel[:, columns] = 0.0
    head.kernel.assign(kernel)


def test_active_units_counts_exactly_the_ignored_dimensions(data):
    # VAE: z has 6 units; units 1 and 4 ignore x by construction.
    vae = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=6, seed=5)
    _zero_mean_columns(vae.q_z_head, [1, 4])
    # HVAE: z1 unit 0 and z2 units 2 and 3 ignore x (z1 and z2 counted separately).
    hvae = tfvamp.build_model("hvae", "standard", SHAPE, "bernoulli", z1_size=5, z2_size=4, seed=6)
    _zero_mean_columns(hvae.q_z1_head, [0])
    _zero_mean_columns(hvae.q_z2_head, [2, 3])
    x = data[:200]
    for model, inactive in ((vae, {"z": {1, 4}}), (hvae, {"z1": {0}, "z2": {2, 3}})):
        counts = evaluation.active_units(model, _dataset(x, 50))
        codes = model.encode(x)
        for layer, size in model.latent_sizes.items():
            # NumPy reference: the diagonal of the covariance over x of the posterior means.
            variances = np.diag(np.atleast_2d(np.cov(codes[f"{layer}_mean"].numpy().astype(np.float64).T)))
            assert set(np.flatnonzero(variances <= 0.01)) == inactive[layer]
            active = np.delete(variances, sorted(inactive[layer]))
            assert active.min() > 0.05  # the others are clearly active, not near the threshold
            assert counts[layer] == size - len(inactive[layer]) == int(np.sum(variances > 0.01))
        # evaluate() counts the same units in its single pass.
        summary, _ = evaluation.evaluate(model, _dataset(x, 50), num_samples=2, progress=False)
        assert summary["active_units"] == counts


def test_active_unit_threshold():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 3))
    # Unit variances 1, 0.012 and 0.008 (sample variances close to those).
    means = z * np.sqrt([1.0, 0.012, 0.008])
    assert evaluation.count_active_units({"z": means}) == {"z": 2}
    assert evaluation.count_active_units({"z": means}, threshold=0.001) == {"z": 3}
    np.testing.assert_allclose(evaluation.unit_variances(means), np.var(means, 0, ddof=1))


def test_samples_from_pseudo_inputs(trained):
    model = trained["vae"]
    chosen = evaluation.choose_pseudo_inputs(model, 3, seed=0)
    assert len(set(chosen)) == 3 and all(0 <= k < 8 for k in chosen)
    a = evaluation.samples_from_pseudo_inputs(model, chosen, num_samples=5, seed=1)
    b = evaluation.samples_from_pseudo_inputs(model, chosen, num_samples=5, seed=1)
    c = evaluation.samples_from_pseudo_inputs(model, chosen, num_samples=5, seed=2)
    assert a.shape == (3, 5) + SHAPE and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Samples come from q(z | u_k) of the chosen u_k: make the first four pseudo-inputs the four
    # clean prototypes, and the images drawn from u_k then look like prototype k.
    clean = np.stack([_prototype(k) for k in range(4)])
    variable = model.prior_layer.pseudo_inputs_variable
    saved = variable.numpy()
    try:
        variable.assign(np.concatenate([clean, saved[4:]], 0))
        drawn = evaluation.samples_from_pseudo_inputs(model, [0, 1, 2, 3], num_samples=20, seed=3)
    finally:
        variable.assign(saved)
    distances = np.abs(drawn.mean(1)[:, None] - clean[None]).mean((2, 3, 4))  # [drawn from k, prototype j]
    np.testing.assert_array_equal(distances.argmin(1), [0, 1, 2, 3])
    hvae_images = evaluation.samples_from_pseudo_inputs(trained["hvae"], [0, 5], num_samples=2, seed=0)
    assert hvae_images.shape == (2, 2) + SHAPE
    standard = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=2)
    with pytest.raises(ValueError, match="no pseudo-inputs"):
        evaluation.samples_from_pseudo_inputs(standard, [0])


def test_pick_images_spreads_over_the_dataset():
    x = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1) / 50  # image i holds i / 50
    picked = evaluation.pick_images(_dataset(x, 16), 6, 50, seed=3)
    values = np.round(picked.ravel() * 50).astype(int)
    expected = np.sort(np.random.default_rng(3).choice(50, 6, replace=False))
    np.testing.assert_array_equal(values, expected)
    assert evaluation.pick_images(_dataset(x, 16), 80, 50).shape == (50, 1, 1, 1)


def _event_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def _tiles(picture, count, height, width, columns, scale=1, padding=1):
    """The `count` tiles of an image grid, row-major, each `[scale H, scale W, C]`."""
    h, w = scale * height, scale * width
    tiles = []
    for i in range(count):
        r, c = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        tiles.append(picture[top:top + h, left:left + w])
    return np.stack(tiles)


def test_pictures_as_png_and_tensorboard(trained, data, tmp_path):
    model = trained["hvae"]
    ll = np.random.default_rng(0).normal(-60, 3, 100)
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    usage = np.array([0.05, 0.3, 0.0, 0.5, 0.1, 0.02, 0.02, 0.01])
    paths = evaluation_writers.write_pictures(model, data[:6], str(tmp_path / "pictures"), log_likelihoods=ll, usage=usage,
                                              writer=writer, num_samples=9, num_reconstructions=6, num_pseudo_inputs=3,
                                              samples_per_pseudo_input=4, interpolation_steps=5, prefix="eval")
    names = {"samples", "reconstructions", "pseudo_inputs", "pseudo_input_samples", "log_likelihood_histogram",
             "interpolations", "pseudo_input_interpolations"}
    assert set(paths) == names
    scale = 7  # the default: 8-pixel tiles enlarged to at least 56 pixels
    side = scale * SHAPE[0] + 1  # an image and its 1-pixel gap
    expected = {"samples": (3 * side + 1, 3 * side + 1, 1),
                "reconstructions": (2 * side + 1, 6 * side + 1, 1),  # 6 pairs, 3 pairs per row
                "pseudo_input_samples": (3 * side + 1, 5 * side + 1, 1),  # u_k then 4 samples, per row
                "pseudo_inputs": (3 * side + 1, 3 * side + 1, 1),  # all K = 8 in a 3 x 3 grid
                "interpolations": (3 * side + 1, 5 * side + 1, 1),  # 3 pairs of the 6 images, 5 steps
                "pseudo_input_interpolations": (2 * side + 1, 5 * side + 1, 1)}  # 3 heaviest: 2 lines
    for name, path in paths.items():
        assert path == str(tmp_path / "pictures" / f"{name}.png")
        picture = tf.io.decode_png(tf.io.read_file(path)).numpy()
        if name in expected:
            assert picture.shape == expected[name], name
        else:
            assert picture.ndim == 3 and picture.shape[-1] == 3 and picture.min() < 128  # something drawn
    # Reconstructions sit next to their originals: column 0 of the grid is the first original.
    recon = tf.io.decode_png(tf.io.read_file(paths["reconstructions"])).numpy()
    first = _tiles(recon, 1, SHAPE[0], SHAPE[1], 6, scale)[0]
    np.testing.assert_array_equal(first, np.round(data[0] * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1))
    # Pseudo-inputs heaviest first: usage order 3, 1, 4, 0, 5, 6, 7, 2.
    u = np.round(model.prior_layer.pseudo_inputs().numpy() * 255).astype(np.uint8)
    grid = tf.io.decode_png(tf.io.read_file(paths["pseudo_inputs"])).numpy()
    shown = _tiles(grid, 8, SHAPE[0], SHAPE[1], 3, scale)[:, ::scale, ::scale]
    np.testing.assert_array_equal(shown, u[[3, 1, 4, 0, 5, 6, 7, 2]])
    # Interpolations start and end at the decoded posterior means of the two images.
    lines = evaluation.interpolations(model, *np.split(model.encode_top(tf.constant(data[:2]))[0].numpy(), 2), 5)
    np.testing.assert_allclose(lines[0, 0], evaluation.interpolations(
        model, model.encode_top(tf.constant(data[:1]))[0].numpy(), model.encode_top(tf.constant(data[:1]))[0].numpy(),
        2)[0, 0], atol=1e-6)
    tags = _event_tags(str(tmp_path / "tb"))
    assert {f"eval/{n}" for n in names} | {"eval/per_example_log_likelihood"} <= tags


def test_component_usage_against_numpy(trained, data):
    """The prior's average responsibility per component against NumPy's mixture on the same
    latent points, and the count of components carrying 99% of it."""
    from scipy.special import softmax
    from scipy.stats import norm

    model = trained["vae"]
    codes = model.encode(data[:64])["z_mean"].numpy().astype(np.float64)
    prior = model.prior()
    means, logvars = prior.means.numpy().astype(np.float64), prior.logvars.numpy().astype(np.float64)
    log_components = norm.logpdf(codes[:, None], means[None], np.exp(0.5 * logvars)[None]).sum(-1) - np.log(len(means))
    expected = softmax(log_components, -1).mean(0)
    usage = evaluation.component_usage(model, codes)
    np.testing.assert_allclose(usage, expected, atol=1e-5)
    ordered = np.sort(expected)[::-1]
    assert evaluation.components_in_use(usage) == int(np.argmax(np.cumsum(ordered) >= 0.99 * ordered.sum()) + 1)
    assert evaluation.components_in_use([0.5, 0.495, 0.004, 0.001]) == 2
    assert evaluation.components_in_use([0.25] * 4) == 4
    standard = tfvamp.build_model("vae", "standard", SHAPE, "bernoulli", z1_size=4)
    assert evaluation.component_usage(standard, codes) is None


def test_projector_files_load_with_tensorboards_reader(trained, data, tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    codes = trained["vae"].encode(data[:30])["z_mean"].numpy()
    ll = np.linspace(-80, -60, 30)
    path = evaluation_writers.write_projector(str(tmp_path), codes, data[:30], ll)
    config = text_format.Parse(open(path).read(), projector_config_pb2.ProjectorConfig())
    (embedding,) = config.embeddings
    checkpoint = tf.train.latest_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(tf.train.load_variable(checkpoint, embedding.tensor_name), codes)
    rows = (tmp_path / embedding.metadata_path).read_text().splitlines()
    assert rows[0] == "index\tlog_likelihood" and len(rows) == 31 and rows[1] == "0\t-80.00"
    sprite = tf.io.decode_png(tf.io.read_file(str(tmp_path / embedding.sprite.image_path))).numpy()
    assert list(embedding.sprite.single_image_dim) == [SHAPE[1], SHAPE[0]]
    assert sprite.shape == (6 * SHAPE[0], 6 * SHAPE[1], 3)  # ceil(sqrt(30)) = 6 per row
    np.testing.assert_array_equal(sprite[:SHAPE[0], SHAPE[1]:2 * SHAPE[1], 0], np.round(data[1, ..., 0] * 255))


def test_evaluate_script(trained, data, tmp_path):
    """scripts/evaluate.py on a run directory: results.json, per-example arrays, pictures, TensorBoard."""
    model = trained["vae"]
    run = tmp_path / "run"
    config = {"model": "vae", "prior": "vampprior", "likelihood": "bernoulli", "input_shape": list(SHAPE),
              "num_components": 8, "z1_size": 4, "z2_size": 40, "pseudo_inputs_mean": 0.05,
              "pseudo_inputs_std": 0.01, "seed": 1, "dataset": "synthetic", "eval_batch_size": 16}
    checkpointing.save_config(str(run), config)
    tf.train.Checkpoint(model=model).save(str(run / checkpointing.BEST_DIR / "ckpt"))
    with open(run / "results.json", "w") as f:
        json.dump({"training": {"epochs": 3}}, f)  # what training wrote stays
    np.save(tmp_path / "test.npy", data[:24])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), f"--model_dir={run}",
         f"--images={tmp_path / 'test.npy'}", "--eval_samples=20", "--num_pictures=4", "--num_pseudo_inputs=2",
         "--samples_per_pseudo_input=3", "--noprogress"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(run / "results.json") as f:
        results = json.load(f)
    assert results["training"] == {"epochs": 3}
    test = results["test"]  # stored under the .npy file's base name
    assert test["num_examples"] == 24 and test["num_samples"] == 20
    assert test["checkpoint"].startswith("best")
    expected_ll = np.mean(model.log_likelihood(data[:24], 20).numpy())
    assert test["log_likelihood"] == pytest.approx(expected_ll, abs=1.0)
    arrays = np.load(run / "eval_test.npz")
    assert arrays["log_likelihood"].shape == (24,)
    assert test["log_likelihood"] == pytest.approx(arrays["log_likelihood"].mean())
    pngs = {os.path.basename(p) for p in glob.glob(str(run / "pictures" / "*.png"))}
    assert pngs == {"samples.png", "reconstructions.png", "pseudo_inputs.png", "pseudo_input_samples.png",
                    "log_likelihood_histogram.png", "interpolations.png", "pseudo_input_interpolations.png"}
    assert 1 <= test["components_in_use"] <= 8
    assert (run / "tensorboard" / "eval" / "projector_config.pbtxt").exists()
    tags = _event_tags(str(run / "tensorboard" / "eval"))
    assert {"eval_test/log_likelihood", "eval_test/elbo", "eval_test/active_units_z",
            "eval_test/samples", "eval_test/log_likelihood_histogram", "eval_test/per_example_log_likelihood"} <= tags


def test_load_model_in_bfloat16_restores_the_float32_weights(trained, data, tmp_path):
    """A float32 run evaluated with bfloat16 hidden layers: same weights, close ELBO terms, and
    the estimator's precision options reach `log_likelihood`."""
    model = trained["hvae"]
    run = tmp_path / "run"
    config = {"model": "hvae", "prior": "vampprior", "likelihood": "bernoulli", "input_shape": list(SHAPE),
              "num_components": 8, "z1_size": 4, "z2_size": 3, "pseudo_inputs_mean": 0.05,
              "pseudo_inputs_std": 0.01, "seed": 2}
    checkpointing.save_config(str(run), config)
    tf.train.Checkpoint(model=model).save(str(run / checkpointing.BEST_DIR / "ckpt"))
    mixed, used = checkpointing.load_model(str(run), compute_dtype="bfloat16")
    assert used.model.compute_dtype == "bfloat16" and mixed.q_z2.layers[-1].compute_dtype == "bfloat16"
    for a, b in zip(model.weights, mixed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = data[:16]
    exact = model.loss_terms(x, noise_fn=tf.zeros)["loss"].numpy()
    np.testing.assert_allclose(mixed.loss_terms(x, noise_fn=tf.zeros)["loss"].numpy(), exact, rtol=0.05)
    summary, _ = evaluation.evaluate(mixed, _dataset(x), num_samples=10, prior_dtype="float64", progress=False)
    assert summary["log_likelihood"] >= summary["elbo"] - 2.0  # a sane estimate from the bf16 model
    with pytest.raises(ValueError, match="prior_dtype"):
        evaluation.evaluate(mixed, _dataset(x), num_samples=10, prior_dtype="float16", progress=False)


def test_evaluate_with_a_seed_is_reproducible(trained, data):
    model, dataset = trained["vae"], _dataset(data[:32])
    _, first = evaluation.evaluate(model, dataset, num_samples=8, seed=5, progress=False)
    _, again = evaluation.evaluate(model, dataset, num_samples=8, seed=5, progress=False)
    _, other = evaluation.evaluate(model, dataset, num_samples=8, seed=6, progress=False)
    for key in ("log_likelihood", "elbo", "reconstruction", "kl"):  # the one-sample ELBO too
        np.testing.assert_array_equal(first[key], again[key])
        assert np.all(first[key] != other[key]), key


def test_pseudo_inputs_moved_counts_those_that_left_their_initialisation():
    """K = 6 pseudo-inputs drawn from N(0.5, 0.02); the test moves two of them well away and
    nudges one by less than the threshold (2.2 x 0.02 x sqrt(2 / pi) = 0.035 per pixel)."""
    model = tfvamp.build_model("vae", "vampprior", SHAPE, "bernoulli", num_components=6, z1_size=3,
                               pseudo_inputs_mean=0.5, pseudo_inputs_std=0.02, seed=3)
    rng = np.random.default_rng(0)
    u = rng.normal(0.5, 0.02, (6,) + SHAPE)
    u[1] += 0.2
    u[4] -= 0.1
    u[5] += 0.01
    model.prior_layer.pseudo_inputs_variable.assign(u.astype(np.float32))
    assert evaluation.pseudo_inputs_moved(model) == 2
