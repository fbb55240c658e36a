"""Tests of crowdpoison.csvio: reading, validating and writing labelled CSV files."""

import gzip
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crowdpoison import csvio
from crowdpoison.cli import InputError
from crowdpoison.csvio import (
    atomic_write,
    check_same_features,
    format_pixel_rows,
    read_labelled_csv,
    read_labelled_csvs,
    write_labelled_csv,
    write_rows,
)
from crowdpoison.idx import read_idx_pair

VALID = b"3,0,255,17\n0,9,10,100\n12,1,2,3\n"
VALID_X = np.array([[0, 255, 17], [9, 10, 100], [1, 2, 3]], dtype=np.uint8)
VALID_Y = np.array([3, 0, 12], dtype=np.int64)


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def reference_row_text(row):
    return b"".join(b",%d" % value for value in row) + b"\n"


# Reading valid files


def test_read_labelled_csv_values(tmp_path):
    X, y = read_labelled_csv(write_bytes(tmp_path / "a.csv", VALID))
    assert X.dtype == np.uint8
    assert y.dtype == np.int64
    assert X.flags.c_contiguous
    np.testing.assert_array_equal(X, VALID_X)
    np.testing.assert_array_equal(y, VALID_Y)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(VALID.rstrip(b"\n"), id="no-final-line-end"),
        pytest.param(VALID.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(b"\xef\xbb\xbf" + VALID, id="byte-order-mark"),
        pytest.param(b"3,000,0255,017\n0,9,10,100\n12,1,2,3\n", id="leading-zeros"),
    ],
)
def test_read_labelled_csv_accepted_variants(tmp_path, data):
    X, y = read_labelled_csv(write_bytes(tmp_path / "a.csv", data))
    np.testing.assert_array_equal(X, VALID_X)
    np.testing.assert_array_equal(y, VALID_Y)


def test_read_labelled_csv_gzip_by_magic_bytes(tmp_path):
    path = write_bytes(tmp_path / "a.csv", gzip.compress(VALID))
    X, y = read_labelled_csv(path)
    np.testing.assert_array_equal(X, VALID_X)
    np.testing.assert_array_equal(y, VALID_Y)


def test_read_labelled_csv_large_labels(tmp_path):
    X, y = read_labelled_csv(write_bytes(tmp_path / "a.csv", b"1000,1\n7,2\n"))
    np.testing.assert_array_equal(y, [1000, 7])
    np.testing.assert_array_equal(X, [[1], [2]])


def test_read_labelled_csv_n_classes_accepts(tmp_path):
    path = write_bytes(tmp_path / "a.csv", VALID)
    _, y = read_labelled_csv(path, n_classes=13, n_features=3)
    np.testing.assert_array_equal(y, VALID_Y)


def test_read_labelled_csv_many_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(300, 7), dtype=np.uint8)
    y = rng.integers(0, 10, size=300)
    path = tmp_path / "a.csv"
    write_labelled_csv(path, X, y)
    monkeypatch.setattr(csvio, "CHUNK_BYTES", 50)
    X_read, y_read = read_labelled_csv(path)
    np.testing.assert_array_equal(X_read, X)
    np.testing.assert_array_equal(y_read, y)


def test_read_labelled_csv_unusual_chunk_among_usual(tmp_path, monkeypatch):
    lines = [b"%d,1,2\n" % (i % 10) for i in range(100)]
    lines[57] = b"1234,0001,2\n"
    monkeypatch.setattr(csvio, "CHUNK_BYTES", 40)
    X, y = read_labelled_csv(write_bytes(tmp_path / "a.csv", b"".join(lines)))
    assert y[57] == 1234
    np.testing.assert_array_equal(X[57], [1, 2])
    assert y[58] == 8


@settings(max_examples=40, deadline=None)
@given(
    X=arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 30))),
    labels=st.lists(st.integers(0, 99999), min_size=20, max_size=20),
)
def test_read_labelled_csv_round_trip(tmp_path_factory, X, labels):
    path = tmp_path_factory.mktemp("round-trip") / "a.csv"
    y = np.array(labels[: len(X)], dtype=np.int64)
    write_labelled_csv(path, X, y)
    X_read, y_read = read_labelled_csv(path)
    np.testing.assert_array_equal(X_read, X)
    np.testing.assert_array_equal(y_read, y)


def test_read_labelled_csv_real_mnist(tmp_path, mnist_dir):
    X, y = read_idx_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    path = tmp_path / "test.csv"
    write_labelled_csv(path, X, y)
    assert path.read_bytes().splitlines()[0].startswith(b"7,0,0,")
    X_read, y_read = read_labelled_csv(path, n_features=784, n_classes=10)
    np.testing.assert_array_equal(X_read, X)
    np.testing.assert_array_equal(y_read, y)


# Reading invalid files


@pytest.mark.parametrize(
    ("data", "kwargs", "match"),
    [
        (b"", {}, r"a\.csv is empty"),
        (b"label,p1,p2\n1,2,3\n", {}, r"line 1 looks like a header row"),
        (b"1,2,3\n\n4,5,6\n", {}, r"line 2 is empty"),
        (b"1,2,3\n4,,6\n", {}, r"line 2, field 2 \(pixel 1 of 2\): missing value"),
        (b"1,2,3\n4,5,\n", {}, r"line 2, field 3 \(pixel 2 of 2\): missing value"),
        (b"1,2,3\n4,x,6\n", {}, r"line 2, field 2 .*: 'x' is not a number"),
        (b"1,2,3\n4,nan,6\n", {}, r"line 2, field 2 .*: value 'nan' is not an integer"),
        (b"1,2,3\n4,5\n", {}, r"line 2 has 2 comma-separated values, but line 1 has 3"),
        (b"1,2,3\n4,5,6,7\n", {}, r"line 2 has 4 comma-separated values"),
        (
            b"1,2,3\n4,256,6\n",
            {},
            (
                r"line 2, field 2 .*: value 256 is out of range; "
                r"expected an integer in 0\.\.255"
            ),
        ),
        (b"1,2,3\n4,-1,6\n", {}, r"line 2, field 2 .*: value -1 is out of range"),
        (b"1,2,3\n4,1.5,6\n", {}, r"field 2 .*: value '1\.5' is not an integer"),
        (b"1,2,3\n4, 5,6\n", {}, r"field 2 .*: invalid value ' 5', not written with"),
        (
            b"1,2,3\n-4,5,6\n",
            {},
            (
                r"line 2, field 1 \(label\): value -4 is out of "
                r"range; expected a non-negative integer"
            ),
        ),
        (b"1,2,3\nx,5,6\n", {}, r"line 2, field 1 \(label\): 'x' is not a number"),
        (
            b"1,2,3\n10,5,6\n",
            {"n_classes": 10},
            (
                r"line 2, field 1 \(label\): value "
                r"10 is out of range; expected an integer in 0\.\.9"
            ),
        ),
        (
            b"1,2,3\n4,5,6\n",
            {"n_features": 3},
            (
                r"line 1 has 2 pixel values, "
                r"expected 3"
            ),
        ),
        (b"7\n8\n", {}, r"line 1: found a single value '7'"),
        (b"1,2,3\r4,5,6\n", {}, r"line 1, field 3 .*: '3\\r4' is not a number"),
        (b"1,2,3\n4,\xff,6\n", {}, r"line 2, field 2 .*: '\ufffd' is not a number"),
    ],
)
def test_read_labelled_csv_invalid(tmp_path, data, kwargs, match):
    path = write_bytes(tmp_path / "a.csv", data)
    with pytest.raises(InputError, match=match):
        read_labelled_csv(path, **kwargs)


def test_read_labelled_csv_error_line_in_later_chunk(tmp_path, monkeypatch):
    lines = [b"1,2,3\n"] * 500
    lines[432] = b"1,2,300\n"
    monkeypatch.setattr(csvio, "CHUNK_BYTES", 64)
    path = write_bytes(tmp_path / "a.csv", b"".join(lines))
    with pytest.raises(InputError, match=r"line 433, field 3 \(pixel 2 of 2\)"):
        read_labelled_csv(path)


def test_read_labelled_csv_error_names_file(tmp_path):
    path = write_bytes(tmp_path / "named.csv", b"1,2\n1,x\n")
    with pytest.raises(InputError, match=r"named\.csv, line 2"):
        read_labelled_csv(path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (gzip.compress(VALID)[:-12], r"gzip stream is truncated"),
        (b"\x1f\x8b" + b"\x00" * 30, r"invalid gzip file"),
    ],
)
def test_read_labelled_csv_bad_gzip(tmp_path, data, match):
    path = write_bytes(tmp_path / "a.csv.gz", data)
    with pytest.raises(InputError, match=match):
        read_labelled_csv(path)


def test_read_labelled_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labelled_csv(tmp_path / "missing.csv")


# Several files


def test_read_labelled_csvs_concatenates(tmp_path):
    first = write_bytes(tmp_path / "1.csv", VALID)
    second = write_bytes(tmp_path / "2.csv", b"5,6,7,8\n")
    X, y, lengths = read_labelled_csvs([first, second])
    assert lengths == [3, 1]
    np.testing.assert_array_equal(X, np.vstack([VALID_X, [[6, 7, 8]]]))
    np.testing.assert_array_equal(y, [3, 0, 12, 5])
    assert X.flags.c_contiguous


def test_read_labelled_csvs_feature_mismatch(tmp_path):
    first = write_bytes(tmp_path / "1.csv", VALID)
    second = write_bytes(tmp_path / "2.csv", b"5,6,7\n")
    with pytest.raises(
        InputError,
        match=r"2\.csv, line 1 has 2 pixel values, "
        r"expected 3 as in .*1\.csv",
    ):
        read_labelled_csvs([first, second])


def test_read_labelled_csvs_error_line_per_file(tmp_path):
    first = write_bytes(tmp_path / "1.csv", VALID)
    second = write_bytes(tmp_path / "2.csv", b"5,6,7,8\n5,6,7\n")
    with pytest.raises(InputError, match=r"2\.csv, line 2 has 3"):
        read_labelled_csvs([first, second])


def test_read_labelled_csvs_no_paths():
    with pytest.raises(ValueError, match="paths is empty"):
        read_labelled_csvs([])


def test_check_same_features_mismatch():
    check_same_features("a.csv", np.zeros((2, 3)), "b.csv", np.zeros((5, 3)))
    with pytest.raises(InputError, match=r"a\.csv has 3 .* b\.csv has 4"):
        check_same_features("a.csv", np.zeros((2, 3)), "b.csv", np.zeros((2, 4)))


# Writing


def test_format_pixel_rows_matches_reference():
    X = np.array([[0, 9, 10, 99, 100, 255], [1, 2, 3, 4, 5, 6]], dtype=np.uint8)
    assert format_pixel_rows(X) == [reference_row_text(row) for row in X.tolist()]


def test_format_pixel_rows_many_blocks():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(csvio.FORMAT_BLOCK_ROWS * 2 + 3, 5), dtype=np.uint8)
    assert format_pixel_rows(X) == [reference_row_text(row) for row in X.tolist()]


@pytest.mark.parametrize(
    ("X", "expected"),
    [
        (np.zeros((0, 4), dtype=np.uint8), []),
        (np.zeros((2, 0), dtype=np.uint8), [b"\n", b"\n"]),
        (np.array([[0.0, 16.0]]), [b",0,16\n"]),
        (np.array([[3, 200]], dtype=np.int64), [b",3,200\n"]),
    ],
)
def test_format_pixel_rows_shapes_and_types(X, expected):
    assert format_pixel_rows(X) == expected


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.zeros(3), r"2-D array"),
        (np.array([[256]]), r"integers in 0\.\.255"),
        (np.array([[-1]]), r"integers in 0\.\.255"),
        (np.array([[0.5]]), r"integers in 0\.\.255"),
        (np.array([["a"]]), r"must hold numbers"),
    ],
)
def test_format_pixel_rows_invalid(X, match):
    with pytest.raises(ValueError, match=match):
        format_pixel_rows(X)


def test_write_rows_lines(tmp_path):
    path = tmp_path / "a.csv"
    write_rows(path, np.array([3, 10]), [b",1,2\n", b",3,4\n"])
    assert path.read_bytes() == b"3,1,2\n10,3,4\n"
    assert list(tmp_path.iterdir()) == [path]


def test_write_rows_gzip(tmp_path):
    path = tmp_path / "a.csv.gz"
    write_rows(path, [3], [b",1,2\n"])
    assert gzip.decompress(path.read_bytes()) == b"3,1,2\n"


@pytest.mark.parametrize(
    ("labels", "texts", "match"),
    [
        ([1, 2], [b",1\n"], r"got 2 labels .* for 1 rows"),
        ([-1], [b",1\n"], r"non-negative integers"),
        ([1.5], [b",1\n"], r"non-negative integers"),
    ],
)
def test_write_rows_invalid(tmp_path, labels, texts, match):
    with pytest.raises(ValueError, match=match):
        write_rows(tmp_path / "a.csv", labels, texts)
    assert list(tmp_path.iterdir()) == []


def test_write_labelled_csv_replaces_file(tmp_path):
    path = write_bytes(tmp_path / "a.csv", b"old")
    write_labelled_csv(path, VALID_X, VALID_Y)
    assert path.read_bytes() == VALID


def test_write_labelled_csv_permissions_follow_umask(tmp_path):
    path = tmp_path / "a.csv"
    old_umask = os.umask(0o022)
    try:
        write_labelled_csv(path, VALID_X, VALID_Y)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = write_bytes(tmp_path / "a.csv", b"old")
    with pytest.raises(RuntimeError, match="stop"), atomic_write(path) as file:
        file.write(b"partial")
        raise RuntimeError("stop")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "a.csv") as file:
        file.write(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
