"""SavedModel export: served by TensorFlow alone, matching the library.

The exported models are checked in a fresh Python process that blocks any import of tfvamp
(an import hook raises), so nothing in the SavedModel can depend on tfvamp's classes.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfvamp
from helpers import train_briefly
from tfvamp import checkpointing
from tfvamp import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
NUM_IMAGES = 6       # images whose log-likelihood is compared
LL_SAMPLES = 64      # importance samples per estimate
# Independent estimates per side (library, served). An estimate's distribution is right-skewed
# (a rare draw carries a large importance weight), so with few repeats the sample variance misses
# those draws and understates the error: at 6 repeats a CI run once saw 5.5 s.e.; at 24 repeats
# the largest of 60 same-model comparisons measured 2.3 s.e.
LL_REPEATS = 24
SEED = 7

# Run in a fresh interpreter: no tfvamp (an import of it fails), no TFP import by us.
SERVE_SCRIPT = textwrap.dedent(r'''
    import json, sys, time

    class _NoTfvamp:
        def find_spec(self, name, path=None, target=None):
            if name == "tfvamp" or name.startswith("tfvamp."):
                raise ImportError("tfvamp was imported while serving a SavedModel")
    sys.meta_path.insert(0, _NoTfvamp())

    import numpy as np
    import tensorflow as tf

    args = json.loads(sys.argv[1])
    tf.random.set_seed(args["seed"])  # the log-likelihood estimates are reproducible
    out = {}
    for name, spec in args["models"].items():
        served = tf.saved_model.load(spec["dir"])
        res = {"signatures": sorted(served.signatures.keys())}
        a = served.sample(num_samples=5, seed=args["seed"]).numpy()
        b = served.sample(5, args["seed"]).numpy()
        c = served.sample(5, args["seed"] + 1).numpy()
        sig = served.signatures["sample"](num_samples=tf.constant(5, tf.int64), seed=tf.constant(args["seed"]))["images"].numpy()
        res.update(sample=a.tolist(), same_seed_equal=bool(np.array_equal(a, b)),
                   signature_equal=bool(np.array_equal(a, sig)),
                   other_seed_differs=bool(not np.array_equal(a, c)))
        x = np.load(spec["images"])
        res["log_likelihood"] = [served.log_likelihood(x, args["ll_samples"]).numpy().tolist()
                                 for _ in range(args["ll_repeats"])]
        res["ll_dtype"] = served.log_likelihood(x, 3).dtype.name
        res["ll_signature"] = served.signatures["log_likelihood"](
            images=tf.constant(x), num_samples=tf.constant(3, tf.int64))["log_likelihood"].shape.as_list()
        res["encode"] = {k: v.numpy().tolist() for k, v in served.encode(x).items()}
        res["reconstruct"] = served.reconstruct(x).numpy().tolist()
        if "pseudo_inputs" in res["signatures"]:
            res["pseudo_inputs"] = served.pseudo_inputs().numpy().tolist()
        meta = served.metadata()
        res["metadata"] = {k: (v.numpy().decode() if v.dtype == tf.string else v.numpy().tolist())
                           for k, v in meta.items()}
        errors = {}
        bad_inputs = {
            "rank": lambda: served.encode(x[..., 0]),
            "shape": lambda: served.log_likelihood(np.zeros((2, 9, 8, 1), np.float32), 2),
            "range": lambda: served.reconstruct(x * 255.0),
            "nan": lambda: served.encode(np.full_like(x, np.nan)),
            "dtype": lambda: served.encode(tf.constant(x, tf.float64)),
            "num_samples": lambda: served.sample(0, 1),
            "ll_num_samples": lambda: served.log_likelihood(x, 0),
            # Requests that would exhaust memory, run without end, or wrap around int32.
            "huge_samples": lambda: served.sample(10 ** 9, 1),
            "wrapping_samples": lambda: served.sample(2 ** 31, 1),
            "huge_ll_samples": lambda: served.log_likelihood(x, 10 ** 9),
            "wrapping_ll_samples": lambda: served.log_likelihood(x, 2 ** 31),
        }
        for label, call in bad_inputs.items():
            start = time.perf_counter()
            try:
                call()
                errors[label] = None
            except Exception as e:  # the type, message and time are what the test checks
                errors[label] = [type(e).__name__, str(e), time.perf_counter() - start]
        res["errors"] = errors
        out[name] = res
    out["tfvamp_imported"] = "tfvamp" in sys.modules
    out["tfp_imported"] = "tensorflow_probability" in sys.modules
    with open(args["output"], "w") as f:
        json.dump(out, f)
''')


def _binary_data(n, rng):
    """Four 8x8 prototypes (bars and a block) with 5% of pixels flipped."""
    protos = np.zeros((4,) + SHAPE, np.float32)
    protos[0, 2:6, :, 0] = 1
    protos[1, :, 2:6, 0] = 1
    protos[2, ::2, :, 0] = 1
    protos[3, 1:7, 1:7, 0] = 1
    x = protos[rng.integers(0, 4, n)]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1.0 - x, x).astype(np.float32)


def _run(argv, cwd, script=None):
    """Runs `python [-c script] argv...` in a fresh process; fails the test with its output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable] + (["-c", script] if script else []) + list(argv)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{list(argv)[:1]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three exported models (a trained VAE, an HVAE on grey data, a PixelHVAE) and what the
    library says about them; the serving process's findings."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    data = _binary_data(512, rng)
    models = {
        "vae": train_briefly(tfvamp.build_model("vae", "vampprior", SHAPE, "bernoulli", num_components=8,
                                         z1_size=4, seed=1), data),
        "hvae_grey": tfvamp.build_model("hvae", "standard", SHAPE, "discretized_logistic", z1_size=3,
                                        z2_size=2, seed=2),
        "pixelhvae": tfvamp.build_model("pixelhvae", "weighted_vampprior", SHAPE, "bernoulli",
                                        num_components=4, z1_size=2, z2_size=2, seed=3),
    }
    images = data[:NUM_IMAGES]
    grey = np.clip(rng.random((NUM_IMAGES,) + SHAPE), 0, 1).astype(np.float32)
    specs, library = {}, {}
    for name, model in models.items():
        x = grey if name == "hvae_grey" else images
        np.save(root / f"{name}_images.npy", x)
        export_dir = export.export_saved_model(model, str(root / name), config={"note": name})
        specs[name] = {"dir": export_dir, "images": str(root / f"{name}_images.npy")}
        library[name] = {
            "model": model, "images": x,
            "sample": model.sample(5, SEED).numpy(),
            "log_likelihood": np.stack([model.log_likelihood(x, LL_SAMPLES).numpy() for _ in range(LL_REPEATS)]),
        }
    output = root / "served.json"
    _run([json.dumps({"models": specs, "seed": SEED, "ll_samples": LL_SAMPLES, "ll_repeats": LL_REPEATS,
                      "output": str(output)})], cwd=str(root), script=SERVE_SCRIPT)
    with open(output) as f:
        results = json.load(f)
    return {"library": library, "served": results, "root": root, "specs": specs}


def test_loads_without_tfvamp_or_tfp(served):
    # The import hook would have failed the load had anything needed tfvamp.
    assert served["served"]["tfvamp_imported"] is False
    # TensorFlow alone serves it: the graphs hold plain TF ops, TFP is never imported.
    assert served["served"]["tfp_imported"] is False


def test_signatures(served):
    sigs = {name: set(served["served"][name]["signatures"]) for name in served["specs"]}
    common = {"sample", "reconstruct", "encode", "log_likelihood", "metadata", "serving_default"}
    assert sigs["vae"] == common | {"pseudo_inputs"}
    assert sigs["pixelhvae"] == common | {"pseudo_inputs"}
    assert sigs["hvae_grey"] == common  # the standard prior has no pseudo-inputs


@pytest.mark.parametrize("name", ["vae", "hvae_grey", "pixelhvae"])
def test_sample_shape_range_and_seed(served, name):
    res, lib = served["served"][name], served["library"][name]
    images = np.asarray(res["sample"], np.float32)
    assert images.shape == (5,) + SHAPE
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert res["same_seed_equal"] and res["signature_equal"] and res["other_seed_differs"]
    # The served graph draws exactly what model.sample draws for that seed.
    np.testing.assert_allclose(images, lib["sample"], atol=1e-5)
    if name == "pixelhvae":  # autoregressive Bernoulli draws inside the graph: binary pixels
        assert set(np.unique(images)) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["vae", "hvae_grey", "pixelhvae"])
def test_log_likelihood_matches_library_within_monte_carlo_error(served, name):
    res, lib = served["served"][name], served["library"][name]
    assert res["ll_dtype"] == "float64"
    assert res["ll_signature"] == [NUM_IMAGES]
    ours = np.asarray(res["log_likelihood"])            # [R, B]
    theirs = lib["log_likelihood"]                        # [R, B]
    assert ours.shape == theirs.shape == (LL_REPEATS, NUM_IMAGES)
    assert np.all(np.isfinite(ours))
    # Independent estimates are not identical (stochastic), but agree within Monte Carlo error:
    # the difference of the repeat means, against 5 standard errors of that difference.
    diff = ours.mean(0) - theirs.mean(0)
    se = np.sqrt(ours.var(0, ddof=1) / LL_REPEATS + theirs.var(0, ddof=1) / LL_REPEATS)
    assert np.all(np.abs(diff) <= 5 * se + 1e-3), (diff, se)


def test_encode_reconstruct_pseudo_inputs_metadata(served):
    for name in served["specs"]:
        res, model = served["served"][name], served["library"][name]["model"]
        x = served["library"][name]["images"]
        expected = {k: v.numpy() for k, v in model.encode(x).items()}
        assert set(res["encode"]) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(np.asarray(res["encode"][key]), value, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(res["reconstruct"]), model.reconstruct(x).numpy(), atol=1e-5)
        meta = res["metadata"]
        assert meta["model"] == model.model_name and meta["prior"] == model.prior_name
        assert meta["likelihood"] == model.likelihood_name and meta["image_shape"] == list(SHAPE)
        assert json.loads(meta["config"]) == {"note": name}
        if model.prior_name != "standard":
            np.testing.assert_allclose(np.asarray(res["pseudo_inputs"]),
                                       model.prior_layer.pseudo_inputs().numpy(), atol=0)
    with open(os.path.join(served["specs"]["vae"]["dir"], "assets.extra", export.CONFIG_FILE)) as f:
        assert json.load(f) == {"note": "vae"}


def test_invalid_inputs_give_clear_errors(served):
    errors = served["served"]["vae"]["errors"]
    for label in ("rank", "shape"):
        kind, message, _ = errors[label]
        assert kind == "InvalidArgumentError"
        assert "images must be a float32 batch of shape [batch, 8, 8, 1]" in message
    for label in ("range", "nan"):
        kind, message, _ = errors[label]
        assert kind == "InvalidArgumentError" and "images must have values in [0, 1]" in message
    kind, message, _ = errors["dtype"]
    assert kind == "TypeError" and "float64" in message and "float32" in message
    for label, cap in (("num_samples", 4096), ("ll_num_samples", 100000), ("huge_samples", 4096),
                       ("wrapping_samples", 4096), ("huge_ll_samples", 100000), ("wrapping_ll_samples", 100000)):
        kind, message, seconds = errors[label]
        assert kind == "InvalidArgumentError" and f"num_samples must be between 1 and {cap}" in message, label
        assert seconds < 1.0, (label, seconds)
    assert served["served"]["vae"]["metadata"]["max_samples"] == 4096


def test_export_and_sample_scripts(served, tmp_path):
    """scripts/export.py from a run directory, then scripts/sample.py on it without tfvamp."""
    model = served["library"]["vae"]["model"]
    run = tmp_path / "runs" / "tiny_vae"
    config = {"model": "vae", "prior": "vampprior", "likelihood": "bernoulli", "input_shape": list(SHAPE),
              "num_components": 8, "z1_size": 4, "z2_size": 40, "pseudo_inputs_mean": 0.05,
              "pseudo_inputs_std": 0.01, "seed": 1, "dataset": "synthetic"}
    checkpointing.save_config(str(run), config)
    tf.train.Checkpoint(model=model).save(str(run / checkpointing.BEST_DIR / "ckpt"))
    _run([os.path.join(ROOT, "scripts", "export.py"), f"--model_dir={run}"], cwd=str(tmp_path))
    export_dir = run / "saved_model"  # the default: <model_dir>/saved_model, never saved_models/
    assert (export_dir / "saved_model.pb").exists()
    with open(export_dir / "assets.extra" / export.CONFIG_FILE) as f:
        assert json.load(f)["dataset"] == "synthetic"

    # sample.py, run with the same tfvamp import block as the serving process.
    guard = SERVE_SCRIPT.split("import numpy")[0]
    runner = guard + textwrap.dedent("""
        import runpy
        sys.argv = sys.argv[1:]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            if e.code:
                raise
        assert "tfvamp" not in sys.modules
    """)
    png, npy = tmp_path / "samples.png", tmp_path / "samples.npy"
    _run([os.path.join(ROOT, "scripts", "sample.py"), f"--saved_model={export_dir}", "--num_samples=6",
          f"--output={png}", f"--output_npy={npy}", f"--seed={SEED}"], cwd=str(tmp_path), script=runner)
    images = np.load(npy)
    np.testing.assert_allclose(images, model.sample(6, SEED).numpy(), atol=1e-5)
    grid = tf.io.decode_png(tf.io.read_file(str(png))).numpy()
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 1)  # 6 images of 8x8 in a 3-column grid, 1-px gaps
