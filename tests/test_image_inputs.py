"""Bad own-data input is a `DataError` naming the file, the problem and the fix, before any
training (issue 26, item 5): decompression bombs, .npy/.npz headers that declare more than the
file holds, truncated or corrupt archives, object members, huge --image_size; 16-bit files scaled,
not clipped; --image_size applied to array and TFDS sources too; what was skipped, converted or
ignored recorded on the `ImageSet`."""
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers import ROOT, SCRIPT, script_env
from tfvamp import flags as tflags
from tfvamp import image_sources
from tfvamp.datasets.errors import DataError

@pytest.fixture(autouse=True, params=["reader", "prepared"])
def _both_paths(request, monkeypatch, tmp_path):
    """Every check runs twice: through `image_sources.open_source` (the source read whole) and
    through the path a run takes (`tfvamp.prepared` into shards, then `tfvamp.data`)."""
    if request.param == "prepared":
        import dataclasses  # pylint: disable=import-outside-toplevel

        from tfvamp import data  # pylint: disable=import-outside-toplevel

        def prepared_set(spec, options=image_sources.SourceOptions()):
            if options.data_dir is None:
                options = dataclasses.replace(options, data_dir=str(tmp_path / "prepared"))
            data._SOURCES.clear()  # pylint: disable=protected-access
            source = data._source(spec, options)  # pylint: disable=protected-access
            image_set = source.image_set
            return image_sources.ImageSet(image_set.name, image_set.splits, image_set.binary, image_set.carved,
                                          image_set.notes, tuple(source.info.skipped))

        monkeypatch.setattr(image_sources, "open_source", prepared_set)
    yield request.param


TINY = dict(num_components=4, z1_size=3, z2_size=3, batch_size=8, eval_batch_size=8, epochs=1, warmup_epochs=1,
            max_steps_per_epoch=2, eval_samples=4, image_every_epochs=0, num_images=4, progress=False)
FIX = "Fix:"


def _validate(tmp_path, dataset, **overrides):
    return tflags.validate_config(tflags.default_config(**dict(TINY, dataset=dataset, model="vae",
                                                               model_dir=str(tmp_path / "r"), **overrides)))


def _grey_images(n, shape=(12, 10), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def _write_folder(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")


def _grey_png_of_zeros(path, height, width, rows):
    """A grey 8-bit PNG whose header says height x width; `rows` rows of zeros are compressed into
    it (all of them: a valid picture; fewer: small on disk, Pillow still reads the header)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row, data = zlib.compressobj(9), b"\0" * (width + 1), b""
    for _ in range(rows):
        data += packer.compress(row)
    data += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# ---- 1. decompression bombs ---------------------------------------------------------------------------
def test_decompression_bombs_are_refused_unread_or_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    _write_folder(folder, _grey_images(10))
    bomb = folder / "bomb.png"  # Pillow's own DecompressionBombError (> 2 x Image.MAX_IMAGE_PIXELS)
    _grey_png_of_zeros(bomb, 30000, 30000, rows=10)
    assert os.path.getsize(bomb) < 10_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    big = folder / "big.png"  # a valid picture under Pillow's limits, over MAX_SOURCE_PIXELS: 1.2 GB decoded
    _grey_png_of_zeros(big, 12000, 12000, rows=12000)
    assert os.path.getsize(big) < 200_000
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    for file, declared in ((bomb, "900000000 pixels"), (big, "12000x12000")):
        with pytest.raises(DataError) as e:
            image_sources.decode_image(str(file), image_sources.SourceOptions())
        message = str(e.value)
        assert str(file) in message and declared in message and f"{image_sources.MAX_SOURCE_PIXELS:,}" in message
        assert "Fix:" in message and "--skip_unreadable" in message
    assert loads == []  # refused from the header: nothing decoded
    with pytest.raises(DataError, match="big.png is refused unread"):
        _validate(tmp_path, f"folder:{folder}")
    image_set = image_sources.open_source(f"folder:{folder}", image_sources.SourceOptions(skip_unreadable=True))
    assert image_set.skipped == (str(big), str(bomb))  # file order
    assert sum(len(s) for s in image_set.splits.values()) == 10 and image_set.image_shape == (12, 10, 1)
    assert (12000, 12000) not in loads and (30000, 30000) not in loads


def test_a_skipped_file_is_recorded_and_a_clean_folder_has_no_notes(tmp_path):
    folder = tmp_path / "images"
    _write_folder(folder, _grey_images(10))
    clean = image_sources.open_source(f"folder:{folder}")
    assert clean.skipped == () and clean.notes == ()
    (folder / "junk.png").write_bytes(b"not a png")
    image_set = image_sources.open_source(f"folder:{folder}", image_sources.SourceOptions(skip_unreadable=True))
    assert image_set.skipped == (str(folder / "junk.png"),)


# ---- 2, 3, 7. .npy / .npz headers, truncation, object and corrupt members --------------------------
def _npy_bytes(shape, descr="|u1", data=b"\0" * 100):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def test_array_headers_that_declare_more_than_the_file_holds(tmp_path):
    huge = (10 ** 6, 1000, 1000)
    (tmp_path / "huge.npy").write_bytes(_npy_bytes(huge))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("train.npy", _npy_bytes(huge))
    for path, what in ((tmp_path / "huge.npy", f"{tmp_path / 'huge.npy'}:"),
                       (tmp_path / "huge.npz", f"{tmp_path / 'huge.npz'}[train]:")):
        with pytest.raises(DataError) as e:
            image_sources.open_source(f"array:{path}")
        message = str(e.value)
        assert message.startswith(what) and "(1000000, 1000, 1000)" in message and "100 bytes" in message
        assert "truncated" in message and "Fix: save the images again with numpy.save" in message
    for version in ((1, 0), (2, 0), (3, 0)):
        with open(tmp_path / f"v{version[0]}.npy", "wb") as f:
            np.lib.format.write_array(f, _grey_images(20), version=version)
        assert image_sources.open_source(f"array:{tmp_path / f'v{version[0]}.npy'}").image_shape == (12, 10, 1)
    image_sources.check_array_header((2, 3), np.uint8, 6, "ok")
    image_sources.check_array_header((2, 3), np.float32, 24, "ok")
    with pytest.raises(DataError, match=r"^x\.npy: its header declares shape \(2, 3\) of float32 \(24 bytes\)"):
        image_sources.check_array_header((2, 3), np.float32, 23, "x.npy")
    with pytest.raises(DataError, match="x.npy holds Python objects.*Fix:"):
        image_sources.check_array_header((2,), object, 100, "x.npy")


def test_truncated_and_corrupt_npz_files(tmp_path):
    images = _grey_images(20)
    np.savez(tmp_path / "good.npz", train=images, validation=images[:4], test=images[:4])
    whole = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError) as e:
        image_sources.open_source(f"array:{tmp_path / 'half.npz'}")
    assert str(tmp_path / "half.npz") in str(e.value) and "truncated" in str(e.value) and FIX in str(e.value)
    assert "not a complete zip archive" in str(e.value)  # an .npz cut short, not "not a numpy array"
    (tmp_path / "half.npy").write_bytes(_npy_bytes((20, 12, 10), data=images.tobytes()[:1000]))
    with pytest.raises(DataError, match="half.npy: its header declares shape \\(20, 12, 10\\).*1,000 bytes"):
        image_sources.open_source(f"array:{tmp_path / 'half.npy'}")

    np.savez_compressed(tmp_path / "packed.npz", train=_grey_images(20, seed=3))
    packed = bytearray((tmp_path / "packed.npz").read_bytes())
    middle = len(packed) // 2
    packed[middle:middle + 64] = bytes(64)  # inside the compressed member
    (tmp_path / "corrupt.npz").write_bytes(bytes(packed))
    with pytest.raises(DataError) as e:
        image_sources.open_source(f"array:{tmp_path / 'corrupt.npz'}")
    assert str(e.value).startswith(f"{tmp_path / 'corrupt.npz'}[train]") and FIX in str(e.value)

    np.savez(tmp_path / "objects.npz", train=np.array([images[0], images[1][:5]], dtype=object))
    with pytest.raises(DataError) as e:
        image_sources.open_source(f"array:{tmp_path / 'objects.npz'}")
    assert str(e.value).startswith(f"{tmp_path / 'objects.npz'}[train] holds Python objects") and FIX in str(e.value)


def test_a_bad_npz_is_a_one_line_error_from_the_script(tmp_path):
    np.savez(tmp_path / "objects.npz", train=np.array([np.zeros((3, 3)), np.zeros((2, 2))], dtype=object))
    result = subprocess.run([sys.executable, SCRIPT, f"--dataset=array:{tmp_path / 'objects.npz'}",
                             f"--model_dir={tmp_path / 'run'}"], cwd=ROOT, env=script_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[0].startswith("Preparing array:"), result.stderr[-2000:]
    assert len(lines) == 2 and lines[1].startswith("error: "), result.stderr[-2000:]  # the one message
    assert str(tmp_path / "objects.npz") in lines[1] and FIX in lines[1]
    assert not (tmp_path / "run").exists()


def test_extra_npz_arrays_are_noted(tmp_path):
    images = _grey_images(20)
    np.savez(tmp_path / "extra.npz", train=images, labels=np.arange(20), test=images[:4])
    image_set = image_sources.open_source(f"array:{tmp_path / 'extra.npz'}")
    assert sorted(image_set.splits) == ["test", "train", "validation"]
    assert len(image_set.notes) == 1 and "labels" in image_set.notes[0] and str(tmp_path / "extra.npz") in \
        image_set.notes[0]


# ---- 4, 6. --image_size: bounded, checked up front, applied to every source ---------------------------
def test_image_size_is_bounded_and_checked_for_every_source(tmp_path):
    side = image_sources.MAX_IMAGE_SIDE
    assert image_sources.parse_image_size(f"{side}x{side}") == (side, side)
    with pytest.raises(DataError, match=f"at most {side} pixels.*Fix: a smaller --image_size"):
        image_sources.parse_image_size("100000x100000")
    with pytest.raises(DataError, match=f"at most {side}"):
        image_sources.parse_image_size(f"32x{side + 1}")
    missing = tmp_path / "not_read.npy"  # refused from the flag's text alone, before any file is read
    for dataset in (f"array:{missing}", "tfds:not_read", f"folder:{tmp_path}"):
        for text, expected in (("abc", "write HxW"), ("100000x100000", "each side must be at most")):
            with pytest.raises(ValueError, match=f"--image_size='{text}': {expected}"):
                _validate(tmp_path, dataset, image_size=text)


def test_image_size_resizes_and_crops_an_array_as_it_would_files(tmp_path):
    images = _grey_images(20, (12, 10))
    np.save(tmp_path / "grey.npy", images)
    np.save(tmp_path / "float.npy", images.astype(np.float32) / 255.0)
    _write_folder(tmp_path / "pngs", images)
    for size, resize in (("6x5", "resize"), ("24x20", "resize"), ("8x6", "crop")):
        options = image_sources.SourceOptions(image_size=size, resize=resize)
        as_array = image_sources.open_source(f"array:{tmp_path / 'grey.npy'}", options)
        height, width = (int(v) for v in size.split("x"))
        assert as_array.image_shape == (height, width, 1)
        as_files = image_sources.open_source(f"folder:{tmp_path / 'pngs'}", options)
        as_floats = image_sources.open_source(f"array:{tmp_path / 'float.npy'}", options)
        for split in ("train", "validation", "test"):
            np.testing.assert_array_equal(as_array.splits[split], as_files.splits[split])
            np.testing.assert_array_equal(as_array.splits[split], as_floats.splits[split])
    np.savez(tmp_path / "splits.npz", train=images[:16], validation=images[16:18], test=images[18:])
    stored = image_sources.open_source(f"array:{tmp_path / 'splits.npz'}",
                                       image_sources.SourceOptions(image_size="6x5")).splits
    expected = np.stack([np.asarray(Image.fromarray(image).resize((5, 6), Image.BOX)) for image in images])
    np.testing.assert_array_equal(stored["train"][..., 0], expected[:16])  # area-averaged, as Pillow does it
    np.testing.assert_array_equal(stored["test"][..., 0], expected[18:])
    with pytest.raises(DataError, match=r"grey.npy image 0 is 12x10, smaller than the 16x16 crop.*Fix"):
        image_sources.open_source(f"array:{tmp_path / 'grey.npy'}",
                                  image_sources.SourceOptions(image_size="16x16", resize="crop"))
    binary = np.random.default_rng(4).random((20, 8, 8, 3)) < 0.5
    np.save(tmp_path / "binary.npy", binary)
    cropped = image_sources.open_source(f"array:{tmp_path / 'binary.npy'}",
                                        image_sources.SourceOptions(image_size="4x4", resize="crop"))
    assert cropped.binary and cropped.image_shape == (4, 4, 3)  # a crop keeps black and white binary


def test_following_the_mixed_split_size_fix_works(tmp_path):
    rng = np.random.default_rng(5)
    splits = {"train": rng.integers(0, 256, (20, 10, 8), dtype=np.uint8),
              "validation": rng.integers(0, 256, (4, 12, 8), dtype=np.uint8),
              "test": rng.integers(0, 256, (4, 10, 8), dtype=np.uint8)}
    np.savez(tmp_path / "mixed.npz", **splits)
    with pytest.raises(DataError) as e:
        image_sources.open_source(f"array:{tmp_path / 'mixed.npz'}")
    assert "different image shapes" in str(e.value) and "--image_size=HxW" in str(e.value)
    image_set = image_sources.open_source(f"array:{tmp_path / 'mixed.npz'}",
                                          image_sources.SourceOptions(image_size="10x8"))
    np.testing.assert_array_equal(image_set.splits["train"][..., 0], splits["train"])  # same size: unchanged
    assert image_set.splits["validation"].shape == (4, 10, 8, 1)


def test_image_size_applies_to_a_tfds_source(tmp_path):
    from test_own_data import _prepare_tfds_dataset

    name = _prepare_tfds_dataset(tmp_path / "tfds")
    native = image_sources.open_source(f"tfds:{name}", image_sources.SourceOptions(data_dir=str(tmp_path / "tfds")))
    assert native.image_shape == (8, 8, 3)
    options = image_sources.SourceOptions(image_size="4x6", data_dir=str(tmp_path / "tfds"))
    resized = image_sources.open_source(f"tfds:{name}", options)
    assert resized.image_shape == (4, 6, 3)
    expected = np.asarray(Image.fromarray(native.splits["test"][0]).resize((6, 4), Image.BOX))
    np.testing.assert_array_equal(resized.splits["test"][0], expected)  # the test split is the source's own
    config = _validate(tmp_path, f"tfds:{name}", image_size="4x6", data_dir=str(tmp_path / "tfds"))
    assert config.model.image_shape == (4, 6, 3)


# ---- 5, 9. 16-bit files scaled, alpha noted, 8-bit files unchanged ------------------------------------
def test_16_bit_files_are_scaled_not_clipped(tmp_path):
    values = np.random.default_rng(6).integers(0, 65536, (12, 10)).astype(np.uint16)
    values[0, :6] = [0, 128, 129, 257, 65406, 65535]  # round(v / 257) at its edges: 0, 0, 1, 1, 254, 255
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    expected = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    assert list(expected[0, :6]) == [0, 0, 1, 1, 254, 255]
    array, tags = image_sources.decode_image(str(tmp_path / "deep.png"), image_sources.SourceOptions())
    np.testing.assert_array_equal(array[..., 0], expected)
    assert tags == {"16bit_scaled"} and array.dtype == np.uint8
    rgb, _ = image_sources.decode_image(str(tmp_path / "deep.png"), image_sources.SourceOptions(channels=3))
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, -1))

    wide = np.array([[0, 100, 300, 65535]], np.int32)  # mode I (a TIFF: Pillow reads the content, not the name)
    Image.fromarray(wide).save(tmp_path / "wide.png", format="TIFF")
    array, tags = image_sources.decode_image(str(tmp_path / "wide.png"), image_sources.SourceOptions())
    assert Image.open(tmp_path / "wide.png").mode == "I" and tags == {"16bit_scaled"}
    np.testing.assert_array_equal(array[..., 0], np.round(wide / 257.0).astype(np.uint8))
    narrow = np.array([[0, 100, 255, 7]], np.int32)  # mode I within 0..255: read as before, no scaling
    Image.fromarray(narrow).save(tmp_path / "narrow.png", format="TIFF")
    array, tags = image_sources.decode_image(str(tmp_path / "narrow.png"), image_sources.SourceOptions())
    np.testing.assert_array_equal(array[..., 0], narrow)
    assert tags == frozenset()
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "over.png", format="TIFF")
    with pytest.raises(DataError, match=r"over.png holds 32-bit integer pixels in \[0, 70000\].*Fix"):
        image_sources.decode_image(str(tmp_path / "over.png"), image_sources.SourceOptions())

    folder = tmp_path / "deep"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.roll(values, i)).save(folder / f"{i}.png")
    image_set = image_sources.open_source(f"folder:{folder}")
    assert image_set.notes == (f"scaled 10 16-bit file(s) to 8 bits, round(v / 257): {folder / '0.png'}, "
                               f"{folder / '1.png'}, {folder / '2.png'} and 7 more",)
    assert not image_set.binary and image_set.splits["train"].max() > 250  # not clipped to black and white


def test_alpha_is_dropped_with_a_note_and_8_bit_files_are_unchanged(tmp_path):
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (10, 12, 10, 4), dtype=np.uint8)
    folder = tmp_path / "rgba"
    _write_folder(folder, rgba)
    image, tags = image_sources.decode_image(str(folder / "00.png"), image_sources.SourceOptions())
    np.testing.assert_array_equal(image, rgba[0, ..., :3])
    assert tags == {"alpha_dropped"}
    image_set = image_sources.open_source(f"folder:{folder}")
    assert len(image_set.notes) == 1 and image_set.notes[0].startswith("dropped the alpha channel")
    assert "10 file(s)" in image_set.notes[0] and image_set.image_shape == (12, 10, 3)
    grey = _grey_images(1)[0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgba[0, ..., :3]).save(tmp_path / "rgb.png")
    for name, expected in (("grey.png", grey[..., None]), ("rgb.png", rgba[0, ..., :3])):
        image, tags = image_sources.decode_image(str(tmp_path / name), image_sources.SourceOptions())
        np.testing.assert_array_equal(image, expected)
        assert tags == frozenset() and image.dtype == np.uint8
