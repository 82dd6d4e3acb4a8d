"""The input pipeline (tfvamp.data): metadata, preprocessing, seeding, binarisation, tf.distribute.

Real-data tests use `real_data_dir` (conftest.py) and skip datasets whose file is absent.
"""
import dataclasses
import gzip
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfvamp import data

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


def batches(ds, n=None):
    """The first n batches (all if None) of one pass over `ds`, as numpy."""
    ds = ds if n is None else ds.take(n)
    return [b.numpy() for b in ds]


def mnist_grey(shared, name):
    with gzip.open(shared / "MNIST" / name) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return raw.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- get_info

def test_get_info_matches_spec():
    spec = {  # name: (shape, likelihood, mean, std, sizes, dynamic) from docs/paper_details.md sections 2 and 6
        "static_mnist": ((28, 28, 1), "bernoulli", 0.05, 0.01, (50000, 10000, 10000), False),
        "dynamic_mnist": ((28, 28, 1), "bernoulli", 0.05, 0.01, (50000, 10000, 10000), True),
        "omniglot": ((28, 28, 1), "bernoulli", 0.05, 0.01, (23000, 1345, 8070), True),
        "caltech101_silhouettes": ((28, 28, 1), "bernoulli", 0.5, 0.02, (4100, 2264, 2307), False),
        "frey_faces": ((28, 20, 1), "discretized_logistic", 0.5, 0.02, (1565, 200, 200), False),
        "histopathology": ((28, 28, 1), "discretized_logistic", 0.4, 0.05, (6800, 2000, 2000), False),
    }
    assert set(data.NAMES) == set(spec)
    for name, (shape, likelihood, mean, std, sizes, dynamic) in spec.items():
        info = data.get_info(name)
        assert (info.name, info.image_shape, info.likelihood, info.dynamic_binarization) == \
            (name, shape, likelihood, dynamic)
        assert (info.pseudo_inputs_mean, info.pseudo_inputs_std) == (mean, std)
        assert info.num_examples == dict(zip(SPLITS, sizes))
        assert info.builder_name == f"tfvamp_{name}"
        assert info.num_pixels == shape[0] * shape[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.get_info("frey_faces").likelihood = "bernoulli"
    with pytest.raises(ValueError, match="static_mnist, dynamic_mnist, omniglot"):
        data.get_info("mnist")


# ----------------------------------------------------------------------------- real data through load

@pytest.mark.parametrize("name", list(data.NAMES))
def test_load_batches_shapes_and_values(real_data_dir, name):
    info = data.get_info(name)
    splits = data.load(name, 100, eval_batch_size=300, data_dir=real_data_dir(name))
    assert splits.info == info
    n_train, n_val, n_test = (info.num_examples[s] for s in SPLITS)
    assert int(splits.train.cardinality()) == n_train // 100
    x = next(iter(splits.train)).numpy()
    assert x.shape == (100,) + info.image_shape and x.dtype == np.float32
    val = np.concatenate(batches(splits.validation))
    test = np.concatenate(batches(splits.test))
    assert (len(val), len(test)) == (n_val, n_test)  # evaluation never drops examples
    for images in (x, val, test):
        assert images.shape[1:] == info.image_shape
        if info.likelihood == "bernoulli":  # 0/1 as stored, or binarised
            assert set(np.unique(images)) <= {0.0, 1.0}
        elif name == "frey_faces":  # (k + 0.5) / 256 for integer k
            k = images * 256 - 0.5
            np.testing.assert_allclose(k, np.round(k), atol=1e-4)
            assert k.min() >= 0 and k.max() <= 255
        else:  # histopathology
            assert images.min() >= 1 / 512 - 1e-7 and images.max() <= 1 - 1 / 512 + 1e-7


def test_same_seed_same_stream_other_seed_other_stream(real_data_dir):
    data_dir = real_data_dir("dynamic_mnist")
    a, b, c = (data.load("dynamic_mnist", 100, data_dir=data_dir, seed=s) for s in (3, 3, 4))
    for _ in range(2):  # two epochs: the same order and binarisation for the same seed
        first_a, first_b, first_c = batches(a.train, 3), batches(b.train, 3), batches(c.train, 3)
        np.testing.assert_array_equal(np.stack(first_a), np.stack(first_b))
        assert not np.array_equal(first_a[0], first_c[0])
    # Validation is binarised once, identically for every seed (every run sees the same images).
    np.testing.assert_array_equal(np.concatenate(batches(a.validation, 5)),
                                  np.concatenate(batches(c.validation, 5)))


def test_training_binarisation_is_redrawn_every_epoch(real_data_dir, shared_data):
    splits = data.load("dynamic_mnist", 100, data_dir=real_data_dir("dynamic_mnist"),
                       shuffle_train=False)
    grey = mnist_grey(shared_data, "train-images-idx3-ubyte.gz")[:100]
    draws = np.stack([batches(splits.train, 1)[0] for _ in range(40)])  # batch 0 of 40 epochs
    assert not np.array_equal(draws[0], draws[1])  # same images, new binarisation
    assert (draws[:, grey == 0] == 0).all() and (draws[:, grey == 1] == 1).all()
    # pixel ~ Bernoulli(grey): the average of the draws approaches the grey image.
    assert abs(draws.mean() - grey.mean()) < 0.005
    assert np.corrcoef(draws.mean(0).ravel(), grey.ravel())[0, 1] > 0.97
    # Different batches of one epoch get different noise too (new seed per batch).
    b0, b1 = batches(splits.train, 2)
    assert not np.array_equal(b0, b1)


def test_evaluation_binarisation_is_the_release_one(real_data_dir, shared_data):
    data_dir = real_data_dir("dynamic_mnist")
    grey_val = mnist_grey(shared_data, "train-images-idx3-ubyte.gz")[50000:]
    grey_test = mnist_grey(shared_data, "t10k-images-idx3-ubyte.gz")
    # The release: np.random.seed(777); x_val = binomial(1, x_val); x_test = binomial(1, x_test)
    rs = np.random.RandomState(777)
    val, test = rs.binomial(1, grey_val), rs.binomial(1, grey_test)
    np.testing.assert_array_equal(data.as_numpy("dynamic_mnist", "validation", data_dir=data_dir), val)
    np.testing.assert_array_equal(data.as_numpy("dynamic_mnist", "test", data_dir=data_dir), test)
    splits = data.load("dynamic_mnist", 100, eval_batch_size=1000, data_dir=data_dir)
    np.testing.assert_array_equal(np.concatenate(batches(splits.validation)), val)


def test_as_numpy_train_is_grey_and_in_file_order(real_data_dir, shared_data):
    x = data.as_numpy("dynamic_mnist", "train", data_dir=real_data_dir("dynamic_mnist"))
    assert x.shape == (50000, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x, mnist_grey(shared_data, "train-images-idx3-ubyte.gz")[:50000])


def test_frey_dequantisation(real_data_dir, shared_data):
    import pickle

    with open(shared_data / "Freyfaces" / "freyfaces.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")[0].reshape(-1, 28, 20, 1)
    x = data.as_numpy("frey_faces", "test", data_dir=real_data_dir("frey_faces"))
    index = np.sort(np.random.RandomState(2018).permutation(1965)[1765:])
    np.testing.assert_array_equal(x, (raw[index].astype(np.float32) + 0.5) / 256)


def test_histopathology_clipping():
    x = data.to_unit("clip", tf.constant([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(x.numpy(), [1 / 512, 0.25, 1 - 1 / 512])


def test_remainders(real_data_dir):
    data_dir = real_data_dir("frey_faces")
    dropped = data.load("frey_faces", 100, eval_batch_size=64, data_dir=data_dir)
    kept = data.load("frey_faces", 100, data_dir=data_dir, drop_remainder=False)
    assert [len(b) for b in batches(dropped.train)] == [100] * 15
    assert [len(b) for b in batches(kept.train)] == [100] * 15 + [65]
    assert [len(b) for b in batches(dropped.validation)] == [64, 64, 64, 8]
    # Without shuffling, one epoch is the training split in file order.
    unshuffled = data.load("frey_faces", 100, data_dir=data_dir, shuffle_train=False, drop_remainder=False)
    np.testing.assert_array_equal(np.concatenate(batches(unshuffled.train)),
                                  data.as_numpy("frey_faces", "train", data_dir=data_dir))


def test_bad_arguments(real_data_dir):
    data_dir = real_data_dir("frey_faces")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            data.load("frey_faces", bad, data_dir=data_dir)
    with pytest.raises(ValueError, match="eval_batch_size"):
        data.load("frey_faces", 10, eval_batch_size=-5, data_dir=data_dir)
    with pytest.raises(ValueError, match="seed"):
        data.load("frey_faces", 10, data_dir=data_dir, seed=-1)
    with pytest.raises(ValueError, match="no full batch"):
        data.load("frey_faces", 2000, data_dir=data_dir)
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        data.as_numpy("frey_faces", "valid", data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("freyfaces", 10, data_dir=data_dir)


def test_missing_file_error_from_load_is_short(tmp_path, monkeypatch):
    monkeypatch.delenv("TFVAMP_MANUAL_DIR", raising=False)
    monkeypatch.setenv("TFVAMP_OFFLINE", "1")
    empty = tmp_path / "originals"
    empty.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load("frey_faces", 10, data_dir=tmp_path / "tfds", manual_dir=empty)
    message = str(e.value)
    assert "freyfaces.pkl" in message and str(empty / "Freyfaces") in message
    assert "https://github.com/jmtomczak/vae_vampprior/raw/master/datasets/Freyfaces/freyfaces.pkl" in message
    frames = traceback.extract_tb(e.value.__traceback__)
    assert not [f for f in frames if "tensorflow_datasets" in f.filename]


def test_prepare_selects_present_datasets(tmp_path, monkeypatch, shared_data):
    monkeypatch.delenv("TFVAMP_MANUAL_DIR", raising=False)
    manual = tmp_path / "originals"
    (manual / "Freyfaces").mkdir(parents=True)
    (manual / "Freyfaces" / "freyfaces.pkl").symlink_to(shared_data / "Freyfaces" / "freyfaces.pkl")
    assert data.available(data_dir=tmp_path / "tfds", manual_dir=manual) == ["frey_faces"]
    lines = []
    timings = data.prepare(data_dir=tmp_path / "tfds", manual_dir=manual, echo=lines.append)
    assert list(timings) == ["frey_faces"]
    text = "\n".join(lines)
    assert "skip static_mnist: not found: binarized_mnist_train.amat" in text
    assert "done in" in text and "train 1565, validation 200, test 200" in text
    lines.clear()
    data.prepare(["frey_faces"], data_dir=tmp_path / "tfds", manual_dir=manual, echo=lines.append)
    assert "already prepared" in "\n".join(lines)


def _run(args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TFVAMP_MANUAL_DIR"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="3", TFVAMP_OFFLINE="1", **env)
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=300)


def test_prepare_script(tmp_path, shared_data):
    manual = tmp_path / "originals"
    manual.mkdir()
    (manual / "freyfaces.pkl").symlink_to(shared_data / "Freyfaces" / "freyfaces.pkl")
    result = _run(["scripts/prepare_data.py", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}",
                   "--datasets=frey_faces,caltech101_silhouettes"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "[1/2] frey_faces" in result.stdout and "done in" in result.stdout
    assert "cannot find caltech101_silhouettes_28_split1.mat" in result.stdout
    assert "could not prepare caltech101_silhouettes" in result.stderr
    assert "Traceback" not in result.stderr


_DISTRIBUTED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfvamp import data
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
splits = data.load("dynamic_mnist", 100, eval_batch_size=500, data_dir=sys.argv[1])
SUM = tf.distribute.ReduceOp.SUM

@tf.function
def step(x):
    return strategy.run(lambda b: (tf.shape(b)[0], tf.reduce_sum(b)), args=(x,))

train = strategy.experimental_distribute_dataset(splits.train)
firsts = []
for epoch in range(2):
    for i, x in enumerate(train):
        n, s = step(x)
        assert [int(v) for v in strategy.experimental_local_results(n)] == [50, 50]
        if i == 0:
            firsts.append(float(strategy.reduce(SUM, s, axis=None)))
        if i == 2:
            break
assert firsts[0] != firsts[1], firsts  # a new epoch: new order and binarisation
val = strategy.experimental_distribute_dataset(splits.validation)
total = sum(int(strategy.reduce(SUM, step(x)[0], axis=None)) for x in val)
assert total == 10000, total
print("distributed ok")
"""


def test_works_with_experimental_distribute_dataset(real_data_dir, tmp_path):
    script = tmp_path / "distributed.py"
    script.write_text(_DISTRIBUTED)
    result = _run([str(script), real_data_dir("dynamic_mnist")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed ok" in result.stdout
