"""Your own images: a folder, an .npy, an .npz with its splits and a TFDS dataset made here, each
trained end to end in every model family; what is inferred from them; every bad input's
message; and the paper's Frey Faces giving the same run through the generic array path."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT, SCRIPT, script_env
from tfvamp import data
from tfvamp import flags as tflags
from tfvamp import image_sources
from tfvamp import run

TINY = dict(num_components=4, z1_size=3, z2_size=3, batch_size=8, eval_batch_size=8, epochs=1, warmup_epochs=1,
            max_steps_per_epoch=2, eval_samples=4, image_every_epochs=0, num_images=4, progress=False)
FAMILIES = ("vae", "hvae", "convhvae", "pixelhvae")


def _rgb_images(n, shape=(10, 8), seed=0):
    """Coloured blocks whose pixels are a permutation of one multiset per image, so that the
    training pixels' mean is known whichever images the split carves out."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, shape[0] * shape[1] * 3).round().astype(np.uint8)
    return np.stack([rng.permutation(base).reshape(shape + (3,)) for _ in range(n)])


def _write_pngs(folder, images, nested=True):
    from PIL import Image

    for i, image in enumerate(images):
        sub = folder / (f"class{i % 3}" if nested else "") / (f"deeper{i % 2}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(sub / f"{i}.png")


def _config(dataset, model, tmp_path, **overrides):
    base = dict(TINY, dataset=dataset, model=model, prior="vampprior", model_dir=str(tmp_path / f"run_{model}"),
                export_dir=str(tmp_path / f"export_{model}"))
    base.update(overrides)
    return tflags.validate_config(tflags.default_config(**base))


def _train_all_families(dataset, tmp_path, through_script, **overrides):
    """`through_script` via scripts/train.py, the other families through `tfvamp.run` in-process
    (the same code the script calls, without a TensorFlow start-up each)."""
    results = {}
    for model in FAMILIES:
        config = _config(dataset, model, tmp_path, **overrides)
        if model == through_script:
            flags = [f"--{k}={v}" for k, v in TINY.items() if k != "progress"] + ["--noprogress"]
            flags += [f"--{k}={v}" for k, v in overrides.items()]
            result = subprocess.run([sys.executable, SCRIPT, f"--dataset={dataset}", f"--model={model}",
                                     f"--model_dir={config.training.model_dir}",
                                     f"--export_dir={config.export.export_dir}"]
                                    + flags, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=400)
            assert result.returncode == 0, result.stderr[-4000:]
            assert "Data: " in result.stdout and result.stderr.strip() == ""
            with open(os.path.join(config.training.model_dir, "results.json")) as f:
                results[model] = json.load(f)
        else:
            results[model] = run.run(config, tf.distribute.get_strategy())
        test = results[model]["test"]
        assert np.isfinite(test["log_likelihood"]), model
        served = tf.saved_model.load(config.export.export_dir)
        assert served.sample(num_samples=2, seed=1).shape == (2,) + tuple(config.model.image_shape)
    return results


def test_folder_of_rgb_pngs_trains_every_family(tmp_path):
    images = _rgb_images(60)
    _write_pngs(tmp_path / "images", images)
    results = _train_all_families(f"folder:{tmp_path / 'images'}", tmp_path, through_script="pixelhvae")
    section = results["vae"]["data"]
    assert section["input_shape"] == [10, 8, 3] and section["likelihood"] == "discretized_logistic"
    assert section["num_examples"] == {"train": 48, "validation": 6, "test": 6}  # 10% and 10% carved
    assert section["carved_splits"] == ["validation", "test"]
    expected_mean = float(np.mean((images.astype(np.float64) + 0.5) / 256.0))
    assert section["pseudo_inputs_init"][0] == pytest.approx(expected_mean, abs=1e-6)
    for model in FAMILIES:  # bits per dimension over H x W x C
        test = results[model]["test"]
        assert test["bits_per_dim"] == pytest.approx(-test["log_likelihood"] / (10 * 8 * 3 * np.log(2)))


def test_a_folder_with_an_unreadable_file(tmp_path, real_data_dir):
    images = _rgb_images(20)
    _write_pngs(tmp_path / "images", images)
    broken = tmp_path / "images" / "class1" / "broken.png"
    broken.write_bytes(open(next((tmp_path / "images").rglob("*.png")), "rb").read()[:40])  # truncated
    with pytest.raises(data.DataError, match=f"{broken}.*cannot be read.*--skip_unreadable"):
        tflags.validate_config(tflags.default_config(**TINY, dataset=f"folder:{tmp_path / 'images'}", model="vae",
                                                     model_dir=str(tmp_path / "r")))
    config = _config(f"folder:{tmp_path / 'images'}", "convhvae", tmp_path, skip_unreadable=True)
    results = run.run(config, tf.distribute.get_strategy())
    assert sum(results["data"]["num_examples"].values()) == 20


def test_npy_of_grey_uint8_trains_every_family(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 9, 7), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", images)
    results = _train_all_families(f"array:{tmp_path / 'grey.npy'}", tmp_path, through_script="vae")
    section = results["hvae"]["data"]
    assert section["input_shape"] == [9, 7, 1] and section["likelihood"] == "discretized_logistic"
    assert section["num_examples"] == {"train": 40, "validation": 5, "test": 5}


def test_npz_with_its_own_binary_splits_trains_every_family(tmp_path):
    rng = np.random.default_rng(2)
    splits = {s: (rng.random((n, 8, 8)) < 0.3) for s, n in (("train", 40), ("validation", 8), ("test", 8))}
    np.savez(tmp_path / "binary.npz", **splits)
    results = _train_all_families(f"array:{tmp_path / 'binary.npz'}", tmp_path, through_script="hvae")
    section = results["convhvae"]["data"]
    assert section["likelihood"] == "bernoulli" and section["input_shape"] == [8, 8, 1]
    assert section["num_examples"] == {"train": 40, "validation": 8, "test": 8} and section["carved_splits"] == []
    assert section["pseudo_inputs_init"][0] == pytest.approx(float(np.clip(splits["train"].mean(), 0.01, 0.99)))


def _prepare_tfds_dataset(data_dir, with_image=True):
    import tensorflow_datasets as tfds

    class OwnTestImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            feature = (tfds.features.Image(shape=(8, 8, 3)) if with_image
                       else tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8))
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {("image" if with_image else "pixels"): feature}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 40), "test": self._generate_examples(1, 10)}

        def _generate_examples(self, seed, n):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield i, {("image" if with_image else "pixels"): rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}

    OwnTestImages.name = "own_test_images" if with_image else "own_test_pixels"
    builder = OwnTestImages(data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder.name


def test_a_tfds_dataset_trains_every_family(tmp_path):
    name = _prepare_tfds_dataset(tmp_path / "tfds")
    results = _train_all_families(f"tfds:{name}", tmp_path, through_script="convhvae", data_dir=str(tmp_path / "tfds"))
    section = results["vae"]["data"]
    assert section["input_shape"] == [8, 8, 3]
    assert section["num_examples"] == {"train": 36, "validation": 4, "test": 10}  # its own test; validation carved
    assert section["carved_splits"] == ["validation"]


def _error(tmp_path, dataset, **overrides):
    with pytest.raises((data.DataError, ValueError)) as e:
        tflags.validate_config(tflags.default_config(**dict(TINY, dataset=dataset, model="vae",
                                                            model_dir=str(tmp_path / "r"), **overrides)))
    return str(e.value)


def test_every_bad_input_has_its_message(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "holds no image files" in _error(tmp_path, f"folder:{tmp_path / 'empty'}")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png at all")
    assert "cannot be read as an image" in _error(tmp_path, f"folder:{tmp_path / 'junk'}")
    assert "none of its 1 image files could be read" in _error(tmp_path, f"folder:{tmp_path / 'junk'}",
                                                               skip_unreadable=True)
    mixed = tmp_path / "mixed"
    _write_pngs(mixed, _rgb_images(3, (10, 8)), nested=False)
    _write_pngs(mixed / "big", _rgb_images(3, (12, 8)), nested=False)
    message = _error(tmp_path, f"folder:{mixed}")
    assert "different sizes" in message and "--image_size=HxW" in message
    greys = tmp_path / "greys"
    _write_pngs(greys, _rgb_images(3), nested=False)
    _write_pngs(greys / "g", _rgb_images(3)[..., :1], nested=False)
    assert "--channels=1" in _error(tmp_path, f"folder:{greys}")
    cases = {"rank": (np.zeros((4, 5), np.uint8), "[N, H, W] or [N, H, W, C]"),
             "dtype": (np.array(["a", "b"]), "must be uint8, bool or float"),
             "float range": (np.full((4, 5, 5), 1.5, np.float32), "float images must lie in [0, 1]"),
             "int range": (np.full((4, 5, 5), 300, np.int32), "must lie in [0, 255]")}
    for label, (array, expected) in cases.items():
        np.save(tmp_path / f"{label}.npy", array)
        assert expected in _error(tmp_path, f"array:{tmp_path / label}.npy"), label
    no_image = _prepare_tfds_dataset(tmp_path / "tfds", with_image=False)
    assert "has no 'image' feature" in _error(tmp_path, f"tfds:{no_image}", data_dir=str(tmp_path / "tfds"))
    assert "not prepared" in _error(tmp_path, "tfds:mnist", data_dir=str(tmp_path / "empty_tfds"))
    np.save(tmp_path / "few.npy", np.zeros((12, 6, 6), np.uint8) + np.arange(12, dtype=np.uint8)[:, None, None])
    assert "exceeds the 10 training images" in _error(tmp_path, f"array:{tmp_path / 'few.npy'}", batch_size=16)
    assert "is read as the paper does" in _error(tmp_path, "frey_faces", channels=3)
    assert "--image_size" in _error(tmp_path, f"folder:{mixed}", image_size="ten")


def test_failed_start_leaves_nothing_behind(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, SCRIPT, f"--dataset=folder:{tmp_path / 'empty'}",
                             f"--model_dir={tmp_path / 'run'}"], cwd=ROOT, env=script_env(), capture_output=True,
                            text=True, timeout=200)
    assert result.returncode == 1 and "holds no image files" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_resize_crop_channels_and_binarize_as_asked(tmp_path):
    images = _rgb_images(30, (12, 10))
    _write_pngs(tmp_path / "images", images, nested=False)
    options = data.SourceOptions(image_size="6x5", resize="crop", channels=1, binarize="dynamic")
    info = data.get_info(f"folder:{tmp_path / 'images'}", options)
    assert info.image_shape == (6, 5, 1) and info.likelihood == "bernoulli" and info.dynamic_binarization
    splits = data.load(f"folder:{tmp_path / 'images'}", 8, options=options)
    batch = next(iter(splits.train)).numpy()
    assert batch.shape == (8, 6, 5, 1) and set(np.unique(batch)) <= {0.0, 1.0}
    resized = data.get_info(f"folder:{tmp_path / 'images'}", data.SourceOptions(image_size="24x20"))
    assert resized.image_shape == (24, 20, 3) and resized.likelihood == "discretized_logistic"


def test_frey_faces_through_the_array_path_is_the_same_run(tmp_path, real_data_dir, shared_data):
    """The paper's Frey Faces and the same stored images given as an .npz with the same splits
    train to the same numbers with the same seed: the generic path changes nothing."""
    data_dir = real_data_dir("frey_faces")
    stored = {s: np.round(data.as_numpy("frey_faces", s, data_dir=data_dir) * 256 - 0.5).astype(np.uint8)
              for s in ("train", "validation", "test")}
    np.savez(tmp_path / "frey.npz", **stored)
    common = dict(TINY, model="hvae", epochs=2, max_steps_per_epoch=3, eval_samples=8, max_eval_batches=2,
                  pseudo_inputs_mean=0.5, pseudo_inputs_std=0.02, evaluate=True, export=False, data_dir=data_dir)
    paper = run.run(tflags.validate_config(tflags.default_config(
        **common, dataset="frey_faces", model_dir=str(tmp_path / "paper"))), tf.distribute.get_strategy())
    generic = run.run(tflags.validate_config(tflags.default_config(
        **common, dataset=f"array:{tmp_path / 'frey.npz'}", model_dir=str(tmp_path / "generic"))),
        tf.distribute.get_strategy())
    assert generic["data"]["likelihood"] == "discretized_logistic" and generic["data"]["input_shape"] == [28, 20, 1]
    assert paper["training"]["best_validation_loss"] == generic["training"]["best_validation_loss"]
    assert paper["test"]["elbo"] == generic["test"]["elbo"]
