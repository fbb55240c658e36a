"""Tests of crowdpoison.idx: reading IDX files, plain and gzip-compressed."""

import gzip
import struct

import numpy as np
import pytest

from crowdpoison.cli import InputError
from crowdpoison.idx import read_idx, read_idx_pair

TYPE_CODES = {
    "u1": 0x08,
    "i1": 0x09,
    ">i2": 0x0B,
    ">i4": 0x0C,
    ">f4": 0x0D,
    ">f8": 0x0E,
}


def idx_bytes(array, dtype="u1"):
    """Encode an array as an IDX file of the given big-endian numpy type."""
    array = np.asarray(array, dtype=dtype)
    header = bytes([0, 0, TYPE_CODES[dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_bytes(path, data):
    path.write_bytes(data)
    return path


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
LABELS = np.array([7, 1], dtype=np.uint8)


def test_read_idx_unsigned_bytes(tmp_path):
    array = read_idx(write_bytes(tmp_path / "images", idx_bytes(IMAGES)))
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, IMAGES)
    assert array.flags.writeable


@pytest.mark.parametrize("dtype", [">i2", ">i4", ">f4", ">f8", "i1"])
def test_read_idx_other_types_native_order(tmp_path, dtype):
    values = np.array([[-3, 2], [1, 100]])
    array = read_idx(write_bytes(tmp_path / "data", idx_bytes(values, dtype)))
    assert array.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(array, values)


def test_read_idx_gzip_by_magic_bytes(tmp_path):
    compressed = write_bytes(tmp_path / "images.idx", gzip.compress(idx_bytes(IMAGES)))
    plain = write_bytes(tmp_path / "images.gz", idx_bytes(IMAGES))
    np.testing.assert_array_equal(read_idx(compressed), IMAGES)
    np.testing.assert_array_equal(read_idx(plain), IMAGES)


def test_read_idx_empty_dimension(tmp_path):
    array = read_idx(write_bytes(tmp_path / "labels", idx_bytes(np.zeros(0))))
    assert array.shape == (0,)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"images is empty"),
        (b"\x00\x00", r"not an IDX file: the magic number is 0x0000"),
        (b"\x1f\x8b" + b"\x00" * 20, r"invalid gzip file"),
        (gzip.compress(idx_bytes(IMAGES))[:-10], r"gzip stream is truncated"),
        (b"P5\n2 3\n255\n" + bytes(6), r"magic number is 0x50350a32"),
        (b"\x00\x00\x07\x01" + bytes(8), r"invalid IDX data type 0x07"),
        (b"\x00\x00\x08\x00", r"gives 0 dimensions"),
        (
            idx_bytes(IMAGES)[:10],
            (
                r"truncated: the IDX header needs 16 bytes for 3 "
                r"dimensions, the file has 10"
            ),
        ),
        (
            idx_bytes(IMAGES)[:-1],
            (
                r"truncated: its header gives 2 x 3 x 4 values "
                r"\(40 bytes with the header\), the file has 39 bytes"
            ),
        ),
        (idx_bytes(IMAGES) + b"\x00\x00", r"has 2 bytes after the data"),
    ],
)
def test_read_idx_invalid(tmp_path, data, match):
    path = write_bytes(tmp_path / "images", data)
    with pytest.raises(InputError, match=match):
        read_idx(path)


def test_read_idx_pair_flattens(tmp_path):
    images = write_bytes(tmp_path / "images", idx_bytes(IMAGES))
    labels = write_bytes(tmp_path / "labels", gzip.compress(idx_bytes(LABELS)))
    X, y = read_idx_pair(images, labels)
    assert X.shape == (2, 12)
    assert X.dtype == np.uint8
    assert X.flags.c_contiguous
    np.testing.assert_array_equal(X, IMAGES.reshape(2, 12))
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [7, 1])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (IMAGES, np.array([1, 2, 3], np.uint8), r"has 2 images but .* has 3 labels"),
        (IMAGES, LABELS.reshape(2, 1), r"has 2 dimensions, expected a label file"),
        (LABELS, LABELS, r"is one-dimensional, expected an image file"),
        (
            np.zeros((0, 28, 28), np.uint8),
            np.zeros(0, np.uint8),
            r"images contains 0 images \(its IDX header gives 0 x 28 x 28\)",
        ),
        (
            np.zeros((2, 0, 4), np.uint8),
            LABELS,
            r"images contains images of 0 pixels \(its IDX header gives 2 x 0 x 4\)",
        ),
        (IMAGES, np.zeros(0, np.uint8), r"labels contains 0 labels"),
    ],
)
def test_read_idx_pair_invalid(tmp_path, images, labels, match):
    images_path = write_bytes(tmp_path / "images", idx_bytes(images))
    labels_path = write_bytes(tmp_path / "labels", idx_bytes(labels))
    with pytest.raises(InputError, match=match):
        read_idx_pair(images_path, labels_path)


def test_read_idx_pair_rejects_other_types(tmp_path):
    images = write_bytes(tmp_path / "images", idx_bytes(IMAGES, ">f4"))
    labels = write_bytes(tmp_path / "labels", idx_bytes(LABELS))
    with pytest.raises(InputError, match=r"contains float32 values, expected unsigned"):
        read_idx_pair(images, labels)


def test_read_idx_pair_real_mnist(mnist_dir):
    X, y = read_idx_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    assert X.shape == (10000, 784)
    assert y.shape == (10000,)
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    assert y[:3].tolist() == [7, 2, 1]
    assert X.max() == 255
