"""Own images prepared once into shards (tfvamp.prepared) and streamed (tfvamp.streaming):
the same splits and pixels as reading the source whole (tfvamp.image_sources, the reference),
preparation once per fingerprint, nothing half-written trusted, seeded resumable epochs, each
worker its own shards."""
import dataclasses
import errno
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfvamp import data
from tfvamp import image_sources
from tfvamp import prepared
from tfvamp import streaming
from tfvamp.data import DataError, SourceOptions


def _folder(path, n=60, shape=(10, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(path / "a", exist_ok=True)
    os.makedirs(path / "b", exist_ok=True)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image if shape[-1] == 3 else image[..., 0]).save(path / ("a" if i % 2 else "b") / f"{i:03d}.png")
    return images


@pytest.fixture(autouse=True)
def _fresh_sources(monkeypatch):
    data._SOURCES.clear()  # pylint: disable=protected-access
    monkeypatch.delenv("TFVAMP_IN_MEMORY_MB", raising=False)
    yield
    data._SOURCES.clear()  # pylint: disable=protected-access


def _options(tmp_path, **kwargs):
    return SourceOptions(data_dir=str(tmp_path / "tfds"), **kwargs)


@pytest.mark.parametrize("kind", ["folder", "npz_splits", "npy_binary", "npy_float"])
def test_prepared_splits_are_those_of_reading_the_source_whole(tmp_path, kind):
    """The arrays, carved splits and inferred statistics of today's in-memory reader, bit for bit."""
    rng = np.random.default_rng(1)
    if kind == "folder":
        _folder(tmp_path / "images")
        spec = f"folder:{tmp_path / 'images'}"
    elif kind == "npz_splits":
        np.savez(tmp_path / "x.npz", train=rng.integers(0, 256, (40, 6, 5), dtype=np.uint8),
                 validation=rng.integers(0, 256, (7, 6, 5), dtype=np.uint8))
        spec = f"array:{tmp_path / 'x.npz'}"
    elif kind == "npy_binary":
        np.save(tmp_path / "x.npy", rng.random((50, 6, 5, 1)) < 0.3)
        spec = f"array:{tmp_path / 'x.npy'}"
    else:
        np.save(tmp_path / "x.npy", rng.integers(0, 256, (50, 6, 5, 3)).astype(np.float32) / 255.0)
        spec = f"array:{tmp_path / 'x.npy'}"
    options = _options(tmp_path)
    reference = image_sources.open_source(spec, options)
    info = data.get_info(spec, options)
    assert info.storage == "memory"
    source = data._source(spec, options)  # pylint: disable=protected-access
    assert source.image_set.binary == reference.binary
    assert source.image_set.carved == reference.carved
    for split in data.SPLITS:
        got, want = source.image_set.splits[split], reference.splits[split]
        assert got.dtype == want.dtype and got.shape == want.shape, split
        np.testing.assert_array_equal(got, want, err_msg=split)
    # The pseudo-input initialisation: float64 from the histogram against the reader's float32
    # sums, equal to 1e-6 (a resumed run keeps its stored values: tfvamp.run.keep_run_init).
    reference_info = data._source_info(reference, options)  # pylint: disable=protected-access
    np.testing.assert_allclose([info.pseudo_inputs_mean, info.pseudo_inputs_std],
                               [reference_info.pseudo_inputs_mean, reference_info.pseudo_inputs_std], rtol=1e-6)
    # The streamed statistics (float64, from the histogram) agree with the in-memory ones (float32).
    mean, std = prepared.pixel_statistics(source.prepared, info.pixels)
    train = data._unit_numpy(info.pixels, reference.splits["train"]).astype(np.float64)  # pylint: disable=protected-access
    assert abs(mean - train.mean()) < 1e-9 and abs(std - train.std()) < 1e-9


def test_prepared_once_then_found_without_decoding(tmp_path, monkeypatch, capfd):
    _folder(tmp_path / "images")
    spec, options = f"folder:{tmp_path / 'images'}", _options(tmp_path)
    first = prepared.prepare(spec, options)
    err = capfd.readouterr().err  # not a terminal: two plain lines instead of the bars
    assert f"Preparing {spec} once into {first.path}" in err and "Prepared 60 images in " in err

    def fail(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_sources, "decode_image", fail)
    again = prepared.prepare(spec, options)
    assert again.path == first.path and again.meta == first.meta
    assert capfd.readouterr().err == ""  # found: nothing to say


def test_a_changed_folder_is_prepared_again(tmp_path):
    images = _folder(tmp_path / "images")
    spec, options = f"folder:{tmp_path / 'images'}", _options(tmp_path)
    first = prepared.prepare(spec, options, progress=False)
    # The same name, new pixels (and a later modification time): a new fingerprint, new shards.
    path = tmp_path / "images" / "b" / "000.png"
    Image.fromarray(255 - images[0]).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    second = prepared.prepare(spec, options, progress=False)
    assert second.path != first.path
    old = np.concatenate([prepared.read_split(first, s) for s in data.SPLITS])
    new = np.concatenate([prepared.read_split(second, s) for s in data.SPLITS])
    assert sum(not np.array_equal(a, b) for a, b in zip(old, new)) == 1  # the one changed image
    # Another pixel option is another preparation too.
    third = prepared.prepare(spec, dataclasses.replace(options, channels=1), progress=False)
    assert third.path not in (first.path, second.path) and third.image_shape[-1] == 1


def test_an_interrupted_preparation_is_never_used(tmp_path, monkeypatch):
    _folder(tmp_path / "images")
    spec, options = f"folder:{tmp_path / 'images'}", _options(tmp_path)
    calls = {"n": 0}
    real = image_sources.decode_image

    def interrupted(file, opts):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(file, opts)

    monkeypatch.setattr(image_sources, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepared.prepare(spec, options, progress=False)
    assert prepared.find(spec, options) is None
    root = prepared.root_dir(options.data_dir)
    assert not [n for n in os.listdir(root) if "incomplete" in n]
    monkeypatch.setattr(image_sources, "decode_image", real)
    assert prepared.prepare(spec, options, progress=False).count("train") == 48


def test_processes_preparing_one_source_at_once_take_turns(tmp_path, monkeypatch, capfd):
    """Two preparations of one source at once (the workers of a multi-worker run): the second
    waits for the first, decodes nothing and reads the first's copy, which stays intact."""
    import threading

    images = _folder(tmp_path / "images", n=40)
    spec, options = f"folder:{tmp_path / 'images'}", _options(tmp_path)
    real = image_sources.decode_image
    decoded, started, release = [], threading.Event(), threading.Event()

    def slow(file, opts):
        started.set()
        release.wait(timeout=60)
        decoded.append(file)
        return real(file, opts)

    monkeypatch.setattr(image_sources, "decode_image", slow)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=prepared.prepare(spec, options, progress=False)))
    first.start()
    assert started.wait(timeout=60)
    second = threading.Thread(target=lambda: results.update(second=prepared.prepare(spec, options, progress=False)))
    second.start()
    deadline = time.time() + 60
    while "Waiting for another process" not in capfd.readouterr().err and time.time() < deadline:
        time.sleep(0.05)
    release.set()
    first.join(timeout=120)
    second.join(timeout=120)
    assert results["first"].path == results["second"].path
    assert len(decoded) == len(images)  # decoded once, by the first
    got = np.concatenate([prepared.read_split(results["second"], s) for s in data.SPLITS])
    assert sorted(map(bytes, got)) == sorted(map(bytes, images))


def test_a_full_disk_keeps_nothing_and_says_so(tmp_path, monkeypatch):
    _folder(tmp_path / "images")
    spec, options = f"folder:{tmp_path / 'images'}", _options(tmp_path)
    real = prepared._Preparation._write_shard  # pylint: disable=protected-access
    written = {"n": 0}

    def full(*args):
        written["n"] += 1
        if written["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(prepared._Preparation, "_write_shard", staticmethod(full))  # pylint: disable=protected-access
    with pytest.raises(DataError, match="disk filled.*nothing was kept.*--data_dir"):
        prepared.prepare(spec, options, progress=False)
    root = prepared.root_dir(options.data_dir)
    assert [n for n in os.listdir(root) if not n.endswith(".lock")] == [] and prepared.find(spec, options) is None


def _streamed(tmp_path, monkeypatch, n=120, batch=10, **kwargs):
    monkeypatch.setenv("TFVAMP_IN_MEMORY_MB", "0")
    _folder(tmp_path / "images", n=n)
    spec = f"folder:{tmp_path / 'images'}"
    options = _options(tmp_path, **kwargs)
    return spec, options, data.load(spec, batch, seed=7, options=options)


def _rows(batches):
    return [tuple(np.round(x * 256 - 0.5).astype(np.uint8).ravel()) for b in batches for x in b]


def test_streamed_epochs_are_seeded_permutations_and_resume(tmp_path, monkeypatch):
    spec, options, splits = _streamed(tmp_path, monkeypatch)
    assert splits.info.storage == "streamed"
    train = data._source(spec, options).image_set  # pylint: disable=protected-access
    assert train is None  # not in memory
    reference = image_sources.open_source(spec, options).splits
    want = sorted(tuple(x.ravel()) for x in reference["train"])
    steps = len(reference["train"]) // 10  # 96 images: 9 full batches
    stream = [b.numpy() for b in splits.epochs(1).take(3 * steps)]
    epochs = [_rows(stream[i * steps:(i + 1) * steps]) for i in range(3)]
    for rows in epochs:  # each epoch: distinct training images, all from the train split
        assert len(set(rows)) == len(rows) == steps * 10 and set(rows) <= set(want)
    assert epochs[0] != epochs[1]
    resumed = [b.numpy() for b in splits.epochs(2).take(steps)]
    assert _rows(resumed) == epochs[1]  # a run resumed at epoch 2 reads what epoch 2 was
    again = data.load(spec, 10, seed=7, options=options)
    assert _rows([b.numpy() for b in again.epochs(1).take(steps)]) == epochs[0]
    other = data.load(spec, 10, seed=8, options=options)
    assert _rows([b.numpy() for b in other.epochs(1).take(steps)]) != epochs[0]
    # Validation and test in order, the reference's images.
    for split in ("validation", "test"):
        got = np.concatenate([b.numpy() for b in getattr(splits, split)])
        np.testing.assert_array_equal(np.round(got * 256 - 0.5).astype(np.uint8), reference[split])


def test_each_worker_reads_only_its_own_shards(tmp_path, monkeypatch):
    spec, options, splits = _streamed(tmp_path, monkeypatch, n=200, batch=20)
    source = data._source(spec, options)  # pylint: disable=protected-access
    files = source.prepared.files("train")
    assert len(files) >= 2
    per_shard = {}
    parse = prepared.parser(source.prepared)
    for i, file in enumerate(files):
        for _, image in prepared.records(source.prepared, "train", [file]).as_numpy_iterator():
            per_shard[image.tobytes()] = i
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        batches = [b.numpy() for b in splits.epochs(1, context).take(8)]
        assert all(len(b) == 10 for b in batches)  # each replica's share of the global batch of 20
        shards = {per_shard[np.round(x * 256 - 0.5).astype(np.uint8).tobytes()] for b in batches for x in b}
        assert shards <= set(range(worker, len(files), 2)), (worker, shards)
        seen.append(shards)
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    del parse


def test_too_few_shards_for_the_workers_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "MIN_TRAIN_SHARDS", 1)
    monkeypatch.setattr(prepared, "SHARD_BYTES", 1 << 30)
    spec, options, splits = _streamed(tmp_path, monkeypatch, n=60, batch=10)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=2)
    with pytest.raises(ValueError, match="1 training shards cannot be split over 2 workers"):
        splits.epochs(1, context)


def test_two_workers_on_loopback_train_a_streamed_folder(tmp_path):
    """MultiWorkerMirroredStrategy over two processes: each builds its input pipeline from its
    own context (pipeline i of 2, its own shards), both make the same steps and end with the same
    weights."""
    import textwrap

    from helpers import run_workers

    _folder(tmp_path / "images", n=240, shape=(12, 12, 1))
    driver = tmp_path / "worker.py"
    driver.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        from absl import flags as absl_flags
        from tfvamp import distribute, flags as tflags, run, streaming, training
        strategy = distribute.make_strategy("auto")
        contexts = []
        original_epochs = streaming.training_epochs
        def epochs(store, batch_size, seed, first_epoch, max_steps=0, input_context=None):
            if input_context is not None:  # (None: the `train` dataset of one epoch, unused by the trainer)
                contexts.append((input_context.num_input_pipelines, input_context.input_pipeline_id))
            return original_epochs(store, batch_size, seed, first_epoch, max_steps, input_context)
        streaming.training_epochs = epochs
        fv = absl_flags.FlagValues()
        tflags.define_flags(fv)
        fv(["train.py", "--dataset=folder:" + sys.argv[1], "--model=vae", "--num_components=4", "--z1_size=4",
            "--batch_size=20", "--epochs=2", "--noevaluate", "--noexport", "--noprogress", "--image_every_epochs=0",
            "--model_dir=" + sys.argv[2], "--data_dir=" + sys.argv[3]])
        config = tflags.config_from_flags(fv)
        holder = {}
        original_fit = training.Trainer.fit
        def fit(self, splits):
            holder["trainer"] = self
            holder["storage"] = splits.info.storage
            return original_fit(self, splits)
        training.Trainer.fit = fit
        run.run(config, strategy)
        trainer = holder["trainer"]
        print("STORAGE", holder["storage"], "CONTEXTS", contexts, "STEPS", int(trainer.optimizer.iterations.numpy()),
              flush=True)
        np.savez(sys.argv[4], *[w.numpy() for w in trainer.model.weights])
    """))
    outputs = run_workers(driver, lambda index: [tmp_path / "images", tmp_path / "run", tmp_path / "tfds",
                                                 tmp_path / f"weights{index}.npz"], TFVAMP_IN_MEMORY_MB="0")
    # 192 training images (48 carved), global batch 20: 9 steps an epoch, 2 epochs.
    for index, (out, _) in enumerate(outputs):
        assert f"STORAGE streamed CONTEXTS [(2, {index})] STEPS 18" in out, out[-2000:]
    a, b = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert len(a.files) == len(b.files) > 0
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_run_whose_inferred_initialisation_differs_in_the_last_bits_resumes(tmp_path):
    """Runs made when the pseudo-input initialisation was summed in float32 resume: within 1e-6
    the stored values are kept, beyond it the folder is refused as another run's."""
    from tfvamp import checkpointing
    from tfvamp import flags as tflags
    from tfvamp import run

    _folder(tmp_path / "images", n=40)
    base = dict(dataset=f"folder:{tmp_path / 'images'}", model="vae", num_components=3, z1_size=2, batch_size=8,
                epochs=1, warmup_epochs=1, model_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"),
                evaluate=False, export=False, progress=False, image_every_epochs=0, strategy="default")
    config = tflags.validate_config(tflags.default_config(**base))
    run.run(config)
    stored = checkpointing.load_config(config.training.model_dir)
    older = stored.replace(pseudo_inputs_mean=stored.model.pseudo_inputs_mean * (1 + 3e-8))
    checkpointing.save_config(config.training.model_dir, older)
    resumed = tflags.validate_config(tflags.default_config(**dict(base, epochs=2)))
    assert resumed.model.pseudo_inputs_mean != older.model.pseudo_inputs_mean
    results = run.run(resumed)
    assert results["training"]["epochs_trained"] == 2
    assert checkpointing.load_config(config.training.model_dir).model.pseudo_inputs_mean == older.model.pseudo_inputs_mean
    far = stored.replace(pseudo_inputs_mean=stored.model.pseudo_inputs_mean * 1.01)
    checkpointing.save_config(config.training.model_dir, far)
    with pytest.raises(run.RunError, match="pseudo_inputs_mean"):
        run.run(tflags.validate_config(tflags.default_config(**dict(base, epochs=3))))
