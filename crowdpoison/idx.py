"""Read IDX files, the format of MNIST and Fashion-MNIST, plain or gzip-compressed.

An IDX file starts with a 4-byte magic number: two zero bytes, a byte for the data
type and a byte for the number of dimensions. The size of each dimension follows as
a big-endian 32-bit unsigned integer, then the data in C order, big-endian.
"""

import logging

import numpy as np

from .cli import InputError
from .csvio import read_decompressed

logger = logging.getLogger(__name__)

# Data type codes of the IDX format and the numpy type of each.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
UNSIGNED_BYTE = 0x08


def read_idx(path):
    """Read an IDX file, plain or gzip-compressed (detected by its magic bytes).

    Parameters
    ----------
    path : str or os.PathLike
        IDX file.

    Returns
    -------
    ndarray
        Array with the shape that the header gives, in native byte order: uint8 for
        unsigned byte data (type 0x08), else int8, int16, int32, float32 or float64.

    Raises
    ------
    InputError
        If the file is empty, is a corrupt or truncated gzip file, has an invalid
        magic number or data type, or contains fewer or more data bytes than its
        header gives.
    """
    return parse_idx(read_decompressed(path), source=path)


def parse_idx(data, *, source):
    """Parse the bytes of an uncompressed IDX file.

    Parameters
    ----------
    data : bytes
        Content of the file.
    source : str or os.PathLike
        Name of the file, for error messages.

    Returns
    -------
    ndarray
        As :func:`read_idx`.
    """
    if not data:
        raise InputError(f"{source} is empty: expected an IDX file")
    if len(data) < 4 or data[:2] != b"\0\0":
        raise InputError(
            f"{source} is not an IDX file: the magic number is 0x{data[:4].hex()}, "
            "expected two zero bytes, the data type and the number of dimensions"
        )
    type_code, n_dims = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise InputError(
            f"{source}: invalid IDX data type 0x{type_code:02x} in the magic number "
            f"0x{data[:4].hex()}, expected one of {known}"
        )
    if n_dims == 0:
        raise InputError(
            f"{source}: the IDX header gives 0 dimensions, expected 1 or more"
        )

    header_size = 4 + 4 * n_dims
    if len(data) < header_size:
        raise InputError(
            f"{source} is truncated: the IDX header needs {header_size} bytes for "
            f"{n_dims} dimensions, the file has {len(data)}"
        )
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", n_dims, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    dims = " x ".join(str(size) for size in shape)
    if len(data) < expected:
        raise InputError(
            f"{source} is truncated: its header gives {dims} values ({expected} bytes "
            f"with the header), the file has {len(data)} bytes"
        )
    if len(data) > expected:
        raise InputError(
            f"{source} has {len(data) - expected} bytes after the data that its "
            f"header gives ({dims} values, {expected} bytes with the header)"
        )

    array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_pair(images_path, labels_path):
    """Read an IDX image file with its IDX label file.

    Parameters
    ----------
    images_path : str or os.PathLike
        IDX file of unsigned bytes with 2 or more dimensions, usually (n_images,
        n_rows, n_columns).
    labels_path : str or os.PathLike
        IDX file of unsigned bytes with one dimension, one label per image.

    Returns
    -------
    X : ndarray of shape (n_images, n_pixels), dtype uint8
        Each image flattened in row-major order, C-contiguous.
    y : ndarray of shape (n_images,), dtype int64
        Labels.

    Raises
    ------
    InputError
        As :func:`read_idx`, and if the files do not hold unsigned bytes, have the
        wrong number of dimensions, contain no image, no pixel or no label, or
        disagree on the number of images.
    """
    return pair_arrays(
        read_idx(images_path), images_path, read_idx(labels_path), labels_path
    )


def pair_arrays(images, images_path, labels, labels_path):
    """Check and flatten arrays read from an IDX image and an IDX label file.

    Parameters
    ----------
    images, labels : ndarray
        Arrays as :func:`read_idx` returns them.
    images_path, labels_path : str or os.PathLike
        Their files, for error messages.

    Returns
    -------
    X, y : ndarray
        As :func:`read_idx_pair`.
    """
    for array, path in ((images, images_path), (labels, labels_path)):
        if array.dtype != np.uint8:
            raise InputError(
                f"{path} contains {array.dtype} values, expected unsigned bytes "
                f"(IDX data type 0x{UNSIGNED_BYTE:02x})"
            )
    if images.ndim < 2:
        raise InputError(
            f"{images_path} is one-dimensional, expected an image file with 2 or "
            "more dimensions (images x rows x columns)"
        )
    if labels.ndim != 1:
        raise InputError(
            f"{labels_path} has {labels.ndim} dimensions, expected a label file with 1"
        )
    dims = " x ".join(str(size) for size in images.shape)
    if len(images) == 0:
        raise InputError(
            f"{images_path} contains 0 images (its IDX header gives {dims}): expected "
            "an image file with at least one image"
        )
    if images.size == 0:
        raise InputError(
            f"{images_path} contains images of 0 pixels (its IDX header gives {dims}): "
            "expected images with at least one row and one column"
        )
    if len(labels) == 0:
        raise InputError(
            f"{labels_path} contains 0 labels (its IDX header gives 0 items): expected "
            "a label file with one label per image"
        )
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} has {len(images)} images but {labels_path} has "
            f"{len(labels)} labels: give the label file that belongs to the images"
        )
    X = np.ascontiguousarray(images.reshape(len(images), -1))
    return X, labels.astype(np.int64)
