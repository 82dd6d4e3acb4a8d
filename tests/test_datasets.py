"""The TFDS builders (tfvamp.datasets): real files, small files in the original formats, bad files.

Real-data tests use the session fixture `real_data_dir` (conftest.py), which builds each dataset
once from ../shared/data and skips datasets whose original file is absent (OMNIGLOT and
histopathology on the reference machine). OMNIGLOT and histopathology also run end to end on
small files written here in exactly the original formats, through a named test config.
"""
import dataclasses
import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

import tfvamp.datasets as D
from tfvamp.datasets import builders

SPLITS = ("train", "validation", "test")
# docs/paper_details.md section 6, written out here rather than read from the code under test.
PAPER_SIZES = {
    "static_mnist": (50000, 10000, 10000),
    "dynamic_mnist": (50000, 10000, 10000),
    "omniglot": (23000, 1345, 8070),
    "caltech101_silhouettes": (4100, 2264, 2307),
    "frey_faces": (1565, 200, 200),
    "histopathology": (6800, 2000, 2000),
}
PAPER_SHAPES = {name: (28, 28, 1) for name in PAPER_SIZES}
PAPER_SHAPES["frey_faces"] = (28, 20, 1)


# ----------------------------------------------------------------------------- helpers

@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """(manual_dir, data_dir): empty, with no $TFVAMP_MANUAL_DIR fallback and no downloads."""
    monkeypatch.delenv("TFVAMP_MANUAL_DIR", raising=False)
    monkeypatch.setenv("TFVAMP_OFFLINE", "1")
    monkeypatch.delenv("TFVAMP_SKIP_CHECKSUMS", raising=False)
    manual = tmp_path / "manual"
    manual.mkdir()
    return manual, tmp_path / "tfds"


def build(name, manual_dir, data_dir, config=None):
    builder = tfds.builder(D.builder_name(name), data_dir=os.fspath(data_dir), config=config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return builder


def read(builder, split):
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


def assert_nothing_built(data_dir):
    """No dataset version folder, complete or half-written, that a later run could trust."""
    leftovers = [p for p in Path(data_dir).rglob("*")
                 if p.is_dir() and ("1.0.0" in p.name or "incomplete" in p.name)]
    assert not leftovers


def assert_helpful(message, path_part, url):
    """Error messages name the file, the URL and the fix."""
    assert path_part in message
    assert url in message
    assert "Fix:" in message


def small_config(name):
    cls = D.OmniglotConfig if name == "omniglot" else D.SizeCheckConfig
    kwargs = {"num_validation": 5} if name == "omniglot" else {}
    return cls(name="small_test", check_sizes=False, **kwargs)


def link(shared, manual, rel):
    """Symlink one real file into the manual dir (same relative path)."""
    (manual / rel).parent.mkdir(parents=True, exist_ok=True)
    (manual / rel).symlink_to(shared / rel)


def write_chardata(path, train, test):
    """Burda's chardata.mat layout: `data` 784 x n, `testdata` 784 x m, Fortran-order columns."""
    cols = lambda images: np.stack([im.flatten(order="F") for im in images], axis=1)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"data": cols(train), "testdata": cols(test)})
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


def write_histopathology(path, splits, protocol=2):
    """The histopathology pickle: a dict of lists of 28x28 float images; .tar.gz as distributed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = pickle.dumps({k: list(v) for k, v in splits.items()}, protocol=protocol)
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("histopathology.pkl")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    else:
        path.write_bytes(raw)


def frey_images(shared):
    with open(shared / "Freyfaces" / "freyfaces.pkl", "rb") as f:
        return pickle.load(f, encoding="latin1")[0]


def original_grey_images(shared, name, split):
    """The original file's images `[N, pixels]` that a split of a grey uint8 dataset indexes,
    read here without tfvamp."""
    if name == "frey_faces":
        return frey_images(shared)
    file = "t10k-images-idx3-ubyte.gz" if split == "test" else "train-images-idx3-ubyte.gz"
    with gzip.open(shared / "MNIST" / file) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)


# ----------------------------------------------------------------------------- registration

def test_builders_registered_with_names_and_versions():
    expected = {n: f"tfvamp_{n}" for n in PAPER_SIZES}
    assert {n: D.builder_name(n) for n in PAPER_SIZES} == expected
    for name, cls in D.BUILDERS.items():
        assert tfds.builder_cls(expected[name]) is cls
        assert str(cls.VERSION) in cls.RELEASE_NOTES
        for source in cls.SOURCES:  # instructions name every file and its URL
            assert source.name in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
            assert source.urls[0] in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    with pytest.raises(ValueError, match="static_mnist"):
        D.builder_name("mnist")


# ----------------------------------------------------------------------------- real files

@pytest.mark.parametrize("name", list(PAPER_SIZES))
def test_real_splits_shapes_and_values(real_data_dir, shared_data, name):
    builder = tfds.builder(D.builder_name(name), data_dir=real_data_dir(name))
    assert tuple(builder.info.splits[s].num_examples for s in SPLITS) == PAPER_SIZES[name]
    for split, size in zip(SPLITS, PAPER_SIZES[name]):
        d = read(builder, split)
        x = d["image"]
        assert x.shape == (size,) + PAPER_SHAPES[name]
        assert np.all(np.diff(d["index"]) > 0)  # stored in file order
        if name in ("static_mnist", "caltech101_silhouettes"):
            assert x.dtype == np.uint8 and set(np.unique(x)) == {0, 1}
        elif name in ("dynamic_mnist", "frey_faces"):
            assert x.dtype == np.uint8 and x.std() > 10
            # Every grey level as often as in the original's images at these indexes.
            original = original_grey_images(shared_data, name, split)[d["index"]]
            np.testing.assert_array_equal(np.bincount(x.ravel(), minlength=256),
                                          np.bincount(original.ravel(), minlength=256))
        else:  # omniglot, histopathology: grey floats as stored
            assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1


def test_real_static_mnist_equals_the_amat_text(real_data_dir, shared_data):
    builder = tfds.builder("tfvamp_static_mnist", data_dir=real_data_dir("static_mnist"))
    x = read(builder, "test")["image"]
    with gzip.open(shared_data / "MNIST_static" / "binarized_mnist_test.amat.gz", "rt") as f:
        first = np.array([[int(v) for v in f.readline().split()] for _ in range(100)])
    np.testing.assert_array_equal(x[:100].reshape(100, 784), first)


def test_real_dynamic_mnist_is_first_50000_and_last_10000(real_data_dir, shared_data):
    builder = tfds.builder("tfvamp_dynamic_mnist", data_dir=real_data_dir("dynamic_mnist"))
    with gzip.open(shared_data / "MNIST" / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(60000, 28, 28, 1)
    train, val = read(builder, "train"), read(builder, "validation")
    np.testing.assert_array_equal(train["index"], np.arange(50000))
    np.testing.assert_array_equal(val["index"], np.arange(50000, 60000))
    np.testing.assert_array_equal(train["image"][-5:], raw[49995:50000])
    np.testing.assert_array_equal(val["image"][:5], raw[50000:50005])
    assert list(np.bincount(read(builder, "test")["label"])) == [980, 1135, 1032, 1010, 982, 892,
                                                                   958, 1028, 974, 1009]


def test_real_caltech_is_inverted_and_upright(real_data_dir, shared_data):
    builder = tfds.builder("tfvamp_caltech101_silhouettes",
                           data_dir=real_data_dir("caltech101_silhouettes"))
    x = read(builder, "train")["image"][..., 0].astype(np.float32)
    raw = scipy.io.loadmat(shared_data / "Caltech101Silhouettes" /
                           "caltech101_silhouettes_28_split1.mat")["train_data"]
    for i in (0, 1, 4099):  # each row is a 28x28 image in Fortran order, then 1 - x
        np.testing.assert_array_equal(x[i], 1 - raw[i].reshape(28, 28, order="F"))
    # Objects are 1 on a 0 background: the image border is mostly 0, the centre mostly 1.
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1).mean()
    assert border < 0.2 and x[:, 10:18, 10:18].mean() > 0.8


def test_real_frey_split_is_seeded_random_and_complete(real_data_dir, shared_data):
    builder = tfds.builder("tfvamp_frey_faces", data_dir=real_data_dir("frey_faces"))
    raw = frey_images(shared_data)
    parts = [read(builder, s) for s in SPLITS]
    indexes = np.concatenate([p["index"] for p in parts])
    assert sorted(indexes) == list(range(1965))  # disjoint and complete
    perm = np.random.RandomState(builders.SPLIT_SEED).permutation(1965)
    np.testing.assert_array_equal(parts[1]["index"], np.sort(perm[1565:1765]))
    for p in parts:
        np.testing.assert_array_equal(p["image"][..., 0], raw[p["index"]].reshape(-1, 28, 20))


def test_plain_tfds_load_builds_from_the_env_manual_dir(shared_data, tmp_path, monkeypatch):
    if not (shared_data / "Freyfaces" / "freyfaces.pkl").exists():
        pytest.skip("freyfaces.pkl absent")
    # Nothing but TFDS and the environment variable: tfvamp.data is not involved.
    monkeypatch.setenv("TFVAMP_MANUAL_DIR", str(shared_data))
    ds = tfds.load("tfvamp_frey_faces", split="validation", data_dir=os.fspath(tmp_path))
    images = np.stack([ex["image"] for ex in tfds.as_numpy(ds)])
    assert images.shape == (200, 28, 20, 1) and images.dtype == np.uint8


def test_plain_tfds_load_reads_a_prepared_dataset(real_data_dir):
    ds = tfds.load("tfvamp_static_mnist", split="validation[:64]", batch_size=64,
                   data_dir=real_data_dir("static_mnist"), download=False)
    batch = next(iter(tfds.as_numpy(ds)))
    assert batch["image"].shape == (64, 28, 28, 1)


# ----------------------------------------------------------------------------- other accepted forms

@pytest.mark.parametrize("form", ["gzip", "frey_rawface.mat"])
def test_frey_other_forms_give_the_same_dataset(isolated, shared_data, real_data_dir, form):
    manual, data_dir = isolated
    raw = (shared_data / "Freyfaces" / "freyfaces.pkl").read_bytes()
    if form == "gzip":
        (manual / "freyfaces.pkl.gz").write_bytes(gzip.compress(raw))
    else:  # Roweis' original layout: ff is 560 x 1965, columns are row-major 28x20 images
        scipy.io.savemat(manual / "frey_rawface.mat", {"ff": frey_images(shared_data).T})
    ours = build("frey_faces", manual, data_dir)
    ref = tfds.builder("tfvamp_frey_faces", data_dir=real_data_dir("frey_faces"))
    for split in SPLITS:
        np.testing.assert_array_equal(read(ours, split)["image"], read(ref, split)["image"])


def test_download_when_absent_then_reuse(isolated, shared_data, monkeypatch):
    manual, data_dir = isolated
    monkeypatch.setenv("TFVAMP_OFFLINE", "0")
    (src,) = D.TfvampFreyFaces.SOURCES
    url = (shared_data / "Freyfaces" / "freyfaces.pkl").as_uri()  # a file:// "original URL"
    monkeypatch.setattr(D.TfvampFreyFaces, "SOURCES", (dataclasses.replace(src, urls=(url,)),))
    builder = build("frey_faces", manual, data_dir)
    assert builder.info.splits["train"].num_examples == 1565
    assert (data_dir / "downloads" / "tfvamp" / "Freyfaces" / "freyfaces.pkl").is_file()


def test_bad_download_is_deleted(isolated, shared_data, monkeypatch, tmp_path):
    manual, data_dir = isolated
    monkeypatch.setenv("TFVAMP_OFFLINE", "0")
    bad = tmp_path / "freyfaces.pkl"
    bad.write_bytes((shared_data / "Freyfaces" / "freyfaces.pkl").read_bytes()[:100000])
    (src,) = D.TfvampFreyFaces.SOURCES
    monkeypatch.setattr(D.TfvampFreyFaces, "SOURCES", (dataclasses.replace(src, urls=(bad.as_uri(),)),))
    # A download is exactly what the URL served: it must match the original's sha256 before
    # anything parses it.
    with pytest.raises(D.ChecksumError, match="it was not parsed.*deleted"):
        build("frey_faces", manual, data_dir)
    assert not (data_dir / "downloads" / "tfvamp" / "Freyfaces" / "freyfaces.pkl").exists()
    assert_nothing_built(data_dir)


def test_bad_file_in_download_cache_is_deleted(isolated, shared_data):
    # E.g. a run killed between downloading and verifying: the cache is ours, so clean it.
    manual, data_dir = isolated
    cached = data_dir / "downloads" / "tfvamp" / "Freyfaces" / "freyfaces.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((shared_data / "Freyfaces" / "freyfaces.pkl").read_bytes()[:5000])
    with pytest.raises(D.ChecksumError, match="deleted"):
        build("frey_faces", manual, data_dir)
    assert not cached.exists()


# ----------------------------------------------------------------------------- OMNIGLOT / histopathology on small files

def test_omniglot_small_file_end_to_end(isolated):
    manual, data_dir = isolated
    rng = np.random.default_rng(0)
    train = rng.random((30, 28, 28)).round(3)
    test = rng.random((7, 28, 28)).round(3)
    write_chardata(manual / "chardata.mat.gz", train, test)  # gzipped, at the top of manual_dir
    builder = build("omniglot", manual, data_dir, small_config("omniglot"))
    parts = {s: read(builder, s) for s in SPLITS}
    assert [len(parts[s]["index"]) for s in SPLITS] == [25, 5, 7]
    perm = np.random.RandomState(builders.SPLIT_SEED).permutation(30)
    np.testing.assert_array_equal(parts["validation"]["index"], np.sort(perm[25:]))
    assert sorted(np.concatenate([parts["train"]["index"], parts["validation"]["index"]])) == list(range(30))
    # Fortran-order columns come back as the images that were written.
    for s, source in (("train", train), ("validation", train), ("test", test)):
        np.testing.assert_allclose(parts[s]["image"][..., 0], source[parts[s]["index"]], atol=1e-7)
    # The same file gives the same splits in another data dir.
    again = build("omniglot", manual, data_dir.parent / "again", small_config("omniglot"))
    np.testing.assert_array_equal(read(again, "validation")["image"], parts["validation"]["image"])


def test_omniglot_paper_config_requires_paper_sizes(isolated):
    manual, data_dir = isolated
    write_chardata(manual / "OMNIGLOT" / "chardata.mat", np.zeros((30, 28, 28)), np.zeros((7, 28, 28)))
    with pytest.raises(D.ShapeError, match="784 x 30, expected 784 x 24345"):
        build("omniglot", manual, data_dir)
    assert_nothing_built(data_dir)


@pytest.mark.parametrize("file_name, protocol", [("histopathology.pkl.tar.gz", 2),
                                                 ("histopathology.pkl", 0)])
def test_histopathology_small_file_end_to_end(isolated, file_name, protocol):
    manual, data_dir = isolated
    rng = np.random.default_rng(1)
    splits = {"training": rng.random((12, 28, 28)), "validation": rng.random((4, 28, 28)),
              "test": rng.random((5, 28, 28))}
    write_histopathology(manual / "HistopathologyGray" / file_name, splits, protocol)
    builder = build("histopathology", manual, data_dir, small_config("histopathology"))
    for split, key in zip(SPLITS, ("training", "validation", "test")):
        x = read(builder, split)["image"]
        assert x.dtype == np.float32 and x.shape == (len(splits[key]), 28, 28, 1)
        np.testing.assert_allclose(x[..., 0], splits[key], atol=1e-7)  # stored unclipped


def test_histopathology_paper_config_requires_paper_sizes(isolated):
    manual, data_dir = isolated
    write_histopathology(manual / "histopathology.pkl",
                         {k: np.zeros((3, 28, 28)) for k in ("training", "validation", "test")})
    with pytest.raises(D.ShapeError, match="3 x 28 x 28, expected 6800 x 28 x 28"):
        build("histopathology", manual, data_dir)
    assert_nothing_built(data_dir)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", list(PAPER_SIZES))
def test_missing_file_names_file_url_and_folder(isolated, name):
    manual, data_dir = isolated
    with pytest.raises(D.MissingFileError) as e:
        build(name, manual, data_dir)
    first = D.BUILDERS[name].SOURCES[0]
    message = str(e.value)
    assert_helpful(message, first.name, first.urls[0])
    assert f"put it in {manual / first.folder}/" in message
    assert "TFVAMP_OFFLINE" in message  # why no download was tried
    assert_nothing_built(data_dir)


def _truncated_cases():
    """name -> function(manual, shared) writing a truncated file (+ good companions)."""
    def amat_gz(m, s):
        link(s, m, "MNIST_static/binarized_mnist_valid.amat.gz")
        link(s, m, "MNIST_static/binarized_mnist_test.amat.gz")
        raw = (s / "MNIST_static/binarized_mnist_train.amat.gz").read_bytes()
        (m / "MNIST_static/binarized_mnist_train.amat.gz").write_bytes(raw[:200000])

    def amat_text(m, s):
        link(s, m, "MNIST_static/binarized_mnist_valid.amat.gz")
        link(s, m, "MNIST_static/binarized_mnist_test.amat.gz")
        line = " ".join(["0"] * 784) + "\n"
        (m / "MNIST_static/binarized_mnist_train.amat").write_text(line * 2 + line[:301])

    def idx_plain(m, s):
        for f in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            link(s, m, f"MNIST/{f}")
        header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        (m / "MNIST/train-images-idx3-ubyte").write_bytes(header + bytes(5000))

    def mat(m, s):
        raw = (s / "Caltech101Silhouettes/caltech101_silhouettes_28_split1.mat").read_bytes()
        (m / "caltech101_silhouettes_28_split1.mat").write_bytes(raw[: len(raw) // 2])

    def pickle_file(m, s):
        raw = (s / "Freyfaces/freyfaces.pkl").read_bytes()
        (m / "freyfaces.pkl").write_bytes(raw[: len(raw) // 2])

    def tar_gz(m, s):
        write_histopathology(m / "histopathology.pkl.tar.gz",
                             {k: np.zeros((3, 28, 28)) for k in ("training", "validation", "test")})
        raw = (m / "histopathology.pkl.tar.gz").read_bytes()
        (m / "histopathology.pkl.tar.gz").write_bytes(raw[: len(raw) // 2])

    return {
        "amat_gz": ("static_mnist", amat_gz, "binarized_mnist_train.amat.gz", "truncated"),
        "amat_text": ("static_mnist", amat_text, "binarized_mnist_train.amat",
                      "truncated: its last line (line 3) has 151 of 784 values"),
        "idx_plain": ("dynamic_mnist", idx_plain, "train-images-idx3-ubyte",
                      "truncated: its header announces 60000x28x28"),
        "mat": ("caltech101_silhouettes", mat, "caltech101_silhouettes_28_split1.mat",
                "truncated or corrupt"),
        "pickle": ("frey_faces", pickle_file, "freyfaces.pkl", "truncated"),
        "tar_gz": ("histopathology", tar_gz, "histopathology.pkl.tar.gz", "truncated"),
    }


@pytest.mark.parametrize("case", list(_truncated_cases()))
def test_truncated_file_is_a_clear_error(isolated, shared_data, case):
    manual, data_dir = isolated
    name, write, file_name, expected = _truncated_cases()[case]
    write(manual, shared_data)
    with pytest.raises(D.CorruptFileError) as e:
        build(name, manual, data_dir, small_config(name) if name == "histopathology" else None)
    assert expected in str(e.value)
    assert_helpful(str(e.value), file_name, D.BUILDERS[name].SOURCES[0].urls[0])
    assert_nothing_built(data_dir)


def _wrong_shape_cases():
    def amat_columns(m, s):
        link(s, m, "MNIST_static/binarized_mnist_valid.amat.gz")
        link(s, m, "MNIST_static/binarized_mnist_test.amat.gz")
        (m / "binarized_mnist_train.amat").write_text((" ".join(["1"] * 783) + "\n") * 2)

    def amat_rows(m, s):
        link(s, m, "MNIST_static/binarized_mnist_valid.amat.gz")
        link(s, m, "MNIST_static/binarized_mnist_test.amat.gz")
        (m / "binarized_mnist_train.amat").write_text((" ".join(["1"] * 784) + "\n") * 3)

    def idx_dims(m, s):
        for f in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            link(s, m, f"MNIST/{f}")
        header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (27).to_bytes(4, "big") * 2
        (m / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(10 * 27 * 27)))

    def caltech(m, s):
        arrays = {f"{p}_data": np.zeros((n, 784), np.uint8) for p, n in
                  (("train", 4100), ("val", 2264), ("test", 2307))}
        arrays.update({f"{p}_labels": np.ones((n, 1), np.uint8) for p, n in
                       (("train", 4100), ("val", 2264), ("test", 2307))})
        arrays["train_data"] = np.zeros((4100, 783), np.uint8)
        scipy.io.savemat(m / "caltech101_silhouettes_28_split1.mat", arrays, do_compression=True)

    def frey(m, s):
        (m / "freyfaces.pkl").write_bytes(pickle.dumps([np.zeros((1965, 784), np.uint8)]))

    def omniglot(m, s):
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"data": np.zeros((783, 30)), "testdata": np.zeros((783, 7))})
        (m / "chardata.mat").write_bytes(buf.getvalue())

    def histopathology(m, s):
        write_histopathology(m / "histopathology.pkl",
                             {k: np.zeros((3, 27, 27)) for k in ("training", "validation", "test")})

    return {
        "amat_columns": ("static_mnist", amat_columns, "line 1 has 783 values, expected 784"),
        "amat_rows": ("static_mnist", amat_rows, "is 3 x 784, expected 50000 x 784"),
        "idx_dims": ("dynamic_mnist", idx_dims, "10x27x27, expected 60000x28x28"),
        "caltech": ("caltech101_silhouettes", caltech, "`train_data` is 4100 x 783, expected 4100 x 784"),
        "frey": ("frey_faces", frey, "is 1965 x 784, expected 1965 x 560"),
        "omniglot": ("omniglot", omniglot, "`data` is 783 x 30, expected 784 x N"),
        "histopathology": ("histopathology", histopathology, "`training` is 3 x 27 x 27, expected N x 28 x 28"),
    }


@pytest.mark.parametrize("case", list(_wrong_shape_cases()))
def test_wrong_shape_is_a_clear_error(isolated, shared_data, case):
    manual, data_dir = isolated
    name, write, expected = _wrong_shape_cases()[case]
    write(manual, shared_data)
    config = small_config(name) if name in ("omniglot", "histopathology") else None
    with pytest.raises(D.ShapeError) as e:
        build(name, manual, data_dir, config)
    assert "wrong shape" in str(e.value) and expected in str(e.value)
    assert_helpful(str(e.value), str(manual), D.BUILDERS[name].SOURCES[0].urls[0])
    assert_nothing_built(data_dir)


def test_values_outside_unit_interval(isolated):
    manual, data_dir = isolated
    train = np.zeros((30, 28, 28))
    train[3, 4, 5] = 1.5
    write_chardata(manual / "chardata.mat", train, np.zeros((7, 28, 28)))
    with pytest.raises(D.ShapeError, match=r"outside \[0, 1\] in `data`"):
        build("omniglot", manual, data_dir, small_config("omniglot"))


def test_changed_pixel_fails_checksum_unless_allowed(isolated, shared_data, monkeypatch):
    manual, data_dir = isolated
    x = frey_images(shared_data).copy()
    x[0, 0] += 1
    (manual / "freyfaces.pkl").write_bytes(pickle.dumps([x]))
    with pytest.raises(D.ChecksumError, match="TFVAMP_SKIP_CHECKSUMS"):
        build("frey_faces", manual, data_dir)
    assert_nothing_built(data_dir)
    monkeypatch.setenv("TFVAMP_SKIP_CHECKSUMS", "1")
    assert build("frey_faces", manual, data_dir).is_prepared()


def test_not_the_format(isolated):
    manual, data_dir = isolated
    (manual / "chardata.mat").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(D.CorruptFileError, match="is not a MATLAB .mat file"):
        build("omniglot", manual, data_dir, small_config("omniglot"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_cannot_run_code(isolated, tmp_path):
    manual, data_dir = isolated
    marker = tmp_path / "pwned"
    (manual / "freyfaces.pkl").write_bytes(pickle.dumps([_Exploit(marker)]))
    with pytest.raises(D.CorruptFileError, match="refusing to load"):
        build("frey_faces", manual, data_dir)
    assert not marker.exists()


def test_failed_build_leaves_nothing_and_next_run_succeeds(isolated, shared_data):
    manual, data_dir = isolated
    raw = (shared_data / "Freyfaces" / "freyfaces.pkl").read_bytes()
    (manual / "freyfaces.pkl").write_bytes(raw[:1000])
    with pytest.raises(D.CorruptFileError):
        build("frey_faces", manual, data_dir)
    assert_nothing_built(data_dir)
    (manual / "freyfaces.pkl").write_bytes(raw)
    builder = build("frey_faces", manual, data_dir)
    assert builder.is_prepared() and builder.info.splits["test"].num_examples == 200
