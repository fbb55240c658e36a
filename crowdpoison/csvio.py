"""Read and write the labelled CSV files that every step of the pipeline shares.

The format has one row per image: the integer label first, then the pixel values as
integers in 0..255, comma separated, with no header and ``\\n`` line ends. Readers
also accept gzip-compressed files (detected by their magic bytes), ``\\r\\n`` line
ends, a UTF-8 byte order mark and a missing final line end.

Reading parses the raw bytes with vectorised numpy operations in chunks of about
4 MiB. A chunk that fails one of the cheap structural checks is parsed again line by
line, which either finds the first invalid line and field and raises
:class:`~crowdpoison.cli.InputError`, or accepts the chunk when it is valid but
unusual (labels of four or more digits, pixels with leading zeros).

Writing goes to a temporary file in the target folder that replaces the target with
``os.replace`` only when it is complete.
"""

import contextlib
import gzip
import logging
import os
import re
import secrets
import zlib
from pathlib import Path

import numpy as np

from .cli import InputError

logger = logging.getLogger(__name__)

MAX_PIXEL = 255
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"

# Bytes per chunk of the vectorised parser, which needs about 15 bytes of scratch
# memory per input byte. Chunks end at a line end, so a chunk contains at least one
# whole line and can be longer than this.
CHUNK_BYTES = 1 << 22
# Rows per block in format_pixel_rows (4 bytes per pixel of scratch space).
FORMAT_BLOCK_ROWS = 512

_ZERO, _NINE, _COMMA, _NEWLINE = b"0"[0], b"9"[0], b","[0], b"\n"[0]
# Bytes put before each chunk: the digits give the first field a zero left of it
# and the comma makes the first field start after a separator, like every other.
_PAD = np.frombuffer(b"00,", dtype=np.uint8)
_DIGITS_LINE = re.compile(rb"[0-9]+(?:,[0-9]+)*")
_INT64_MAX = np.iinfo(np.int64).max


# File access


def read_decompressed(path):
    """Read a file and decompress it when it starts with the gzip magic bytes.

    Parameters
    ----------
    path : str or os.PathLike
        File to read, plain or gzip-compressed whatever its name.

    Returns
    -------
    bytes
        The (decompressed) content.

    Raises
    ------
    InputError
        If the file starts like a gzip file but is corrupt or truncated.
    """
    data = Path(path).read_bytes()
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise InputError(
            f"{path}: the gzip stream is truncated (the file ends before the end "
            "of the compressed data); download or copy the file again"
        ) from None
    except (OSError, zlib.error) as exc:
        raise InputError(
            f"{path}: invalid gzip file ({exc}); download or copy the file again"
        ) from None


@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary file for writing that replaces ``path`` once it is complete.

    The temporary file ``.<name>.<random>.tmp`` lives in the folder of ``path`` so
    that ``os.replace`` is atomic. If the ``with`` block raises, the temporary file
    is removed and ``path`` keeps its previous content (or stays absent). The file
    gets the usual permissions for a new file (0o666 minus the umask). The data is
    not synced to disk.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name. Its folder must exist.

    Yields
    ------
    file object
        A binary file open for writing.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Reading


def read_labelled_csv(path, *, n_features=None, n_classes=None):
    """Read a labelled CSV file (plain or gzip-compressed).

    Parameters
    ----------
    path : str or os.PathLike
        CSV file: per line the label, then the pixel values, comma separated.
    n_features : int, optional
        Expected number of pixel values per row. ``None`` accepts any number, the
        same on every line.
    n_classes : int, optional
        Labels must be in ``0..n_classes - 1``. ``None`` accepts any non-negative
        integer.

    Returns
    -------
    X : ndarray of shape (n_rows, n_features), dtype uint8
        Pixel values, C-contiguous.
    y : ndarray of shape (n_rows,), dtype int64
        Labels.

    Raises
    ------
    InputError
        If the file is empty or has a header row, an empty line, a missing or
        non-numeric value, or rows of different lengths. Also if a pixel value is
        not an integer in 0..255, a label is not an allowed integer, or the number
        of pixel values differs from ``n_features``. The message names the file
        and the 1-based line and field.
    """
    X, y, _ = read_labelled_csvs([path], n_features=n_features, n_classes=n_classes)
    return X, y


def read_labelled_csvs(paths, *, n_features=None, n_classes=None):
    """Read several labelled CSV files in order and concatenate their rows.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        CSV files, at least one.
    n_features : int, optional
        Expected number of pixel values per row. ``None`` takes the number from the
        first file and requires it of the others.
    n_classes : int, optional
        As in :func:`read_labelled_csv`.

    Returns
    -------
    X : ndarray of shape (n_rows, n_features), dtype uint8
        Pixel values of all files, C-contiguous.
    y : ndarray of shape (n_rows,), dtype int64
        Labels of all files.
    lengths : list of int
        Number of rows of each file, in the order of ``paths``.

    Raises
    ------
    InputError
        As :func:`read_labelled_csv`, and if the files differ in their number of
        pixel values.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: give at least one CSV file")
    texts = [_normalize_text(read_decompressed(path), path) for path in paths]
    n_features_given = n_features is not None
    for path, data in zip(paths, texts):
        n_fields = _count_fields_of_first_line(data, path)
        if n_features is None:
            n_features = n_fields - 1
        elif n_fields - 1 != n_features:
            origin = "" if n_features_given else f" as in {paths[0]}"
            raise InputError(
                f"{path}, line 1 has {n_fields - 1} pixel values, expected "
                f"{n_features}{origin}: use files converted from the same dataset"
            )

    lengths = [data.count(b"\n") for data in texts]
    X = np.empty((sum(lengths), n_features), dtype=np.uint8)
    y = np.empty(len(X), dtype=np.int64)
    label_max = _INT64_MAX if n_classes is None else n_classes - 1
    chunks = [list(_chunk_bounds(data)) for data in texts]
    max_chunk_bytes = max(end - start for bounds in chunks for start, end in bounds)
    fast_parser = _FastChunkParser(max_chunk_bytes)
    row = 0
    for path, data, bounds in zip(paths, texts, chunks):
        first_line = 1
        for start, end in bounds:
            chunk = data[start:end]
            n_rows = chunk.count(b"\n")
            rows = slice(row, row + n_rows)
            if not fast_parser.parse(
                chunk, n_features + 1, label_max, X[rows], y[rows]
            ):
                _parse_chunk_checked(
                    chunk, path, first_line, n_features + 1, label_max, X[rows], y[rows]
                )
            first_line += n_rows
            row += n_rows
    return X, y, lengths


def check_same_features(train_path, X_train, test_path, X_test):
    """Raise InputError unless a training and a test set have the same pixel count.

    Parameters
    ----------
    train_path, test_path : str or os.PathLike
        Files the arrays come from, for the message.
    X_train, X_test : ndarray of shape (n_rows, n_features)
        Pixel arrays.
    """
    if X_train.shape[1] != X_test.shape[1]:
        raise InputError(
            f"the training data {train_path} has {X_train.shape[1]} pixel values per "
            f"row but the test data {test_path} has {X_test.shape[1]}: use training "
            "and test files converted from the same dataset"
        )


def _normalize_text(data, path):
    if not data:
        raise InputError(
            f"{path} is empty: expected one line per image, the label followed by "
            "the pixel values"
        )
    data = data.removeprefix(UTF8_BOM)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    return data


def _count_fields_of_first_line(data, path):
    first_end = data.index(b"\n")
    n_fields = data.count(b",", 0, first_end) + 1
    if n_fields < 2 and first_end > 0:
        raise InputError(
            f"{path}, line 1: found a single value {_show(data[:first_end])}: each "
            "line needs the label followed by the pixel values, comma separated"
        )
    return n_fields


def _chunk_bounds(data):
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + CHUNK_BYTES - 1)
        end = len(data) if end == -1 else end + 1
        yield start, end
        start = end


class _FastChunkParser:
    """Vectorised parser for chunks of lines that hold only short digit fields.

    The scratch arrays are allocated once and reused for every chunk, which avoids
    the page faults of fresh allocations.
    """

    def __init__(self, max_chunk_bytes):
        size = max_chunk_bytes + len(_PAD)
        self._bytes = np.empty(size, dtype=np.uint8)
        self._is_separator = np.empty(size, dtype=bool)
        self._is_digit = np.empty(size, dtype=bool)
        self._pairs = np.empty(size, dtype=bool)
        self._digits = np.empty(size, dtype=np.uint8)
        self._low = np.empty(size, dtype=np.uint8)
        self._high = np.empty(size, dtype=np.uint8)
        self._values = np.empty(size, dtype=np.uint16)

    def parse(self, chunk, n_fields, label_max, X_out, y_out):
        """Parse whole lines into X_out, y_out; return False if the chunk is unusual.

        The chunk is usual when every field has one to three digits, every line has
        n_fields fields, every pixel is at most 255 and every label at most
        label_max. Nothing is written to X_out, y_out for an unusual chunk.
        """
        n = len(chunk) + len(_PAD)
        b = self._bytes[:n]
        b[: len(_PAD)] = _PAD
        b[len(_PAD) :] = np.frombuffer(chunk, dtype=np.uint8)
        if b.max() > _NINE:
            return False
        is_separator = np.less(b, _ZERO, out=self._is_separator[:n])
        is_digit = np.logical_not(is_separator, out=self._is_digit[:n])

        # Every field has one to three digits: no empty field, no run of four digits.
        pairs = self._pairs[: n - 1]
        if np.any(np.logical_and(is_separator[1:], is_separator[:-1], out=pairs)):
            return False
        np.logical_and(is_digit[1:], is_digit[:-1], out=pairs)
        if np.any(pairs[2:] & pairs[:-2]):
            return False

        # Each line has n_fields separators, of which only the last is a line end.
        n_rows = len(y_out)
        separators = np.flatnonzero(is_separator)[1:]
        if len(separators) != n_rows * n_fields:
            return False
        if np.count_nonzero(b == _COMMA) - 1 != n_rows * (n_fields - 1):
            return False
        if not np.all(b[separators[n_fields - 1 :: n_fields]] == _NEWLINE):
            return False

        # The field that ends before separator i has the value 100 d[i-3] +
        # 10 d[i-2] + d[i-1], where d is the digit value and 0 for a separator.
        # The hundreds count only when the tens are a digit of the same field.
        digits = np.subtract(b, _ZERO, out=self._digits[:n])
        np.multiply(digits, is_digit, out=digits)
        low = np.multiply(digits[1:-2], 10, out=self._low[: n - 3])
        np.add(low, digits[2:-1], out=low)
        high = np.multiply(digits[:-3], is_digit[1:-2], out=self._high[: n - 3])
        values = self._values[:n]
        np.multiply(high, 100, out=values[3:], dtype=np.uint16)
        np.add(values[3:], low, out=values[3:], dtype=np.uint16)
        table = values[separators].reshape(n_rows, n_fields)

        pixels = table[:, 1:]
        labels = table[:, 0]
        if pixels.max() > MAX_PIXEL or labels.max() > label_max:
            return False
        np.copyto(X_out, pixels, casting="unsafe")
        y_out[:] = labels
        return True


def _parse_chunk_checked(chunk, path, first_line, n_fields, label_max, X_out, y_out):
    """Parse whole lines one by one into X_out, y_out, raising on the first error."""
    lines = chunk.split(b"\n")[:-1]
    for offset, line in enumerate(lines):
        line_number = first_line + offset
        if _DIGITS_LINE.fullmatch(line):
            fields = line.split(b",")
            if len(fields) == n_fields:
                values = [int(field) for field in fields]
                if values[0] <= label_max and max(values[1:]) <= MAX_PIXEL:
                    y_out[offset] = values[0]
                    X_out[offset] = values[1:]
                    continue
        _raise_line_error(path, line_number, line, n_fields, label_max)


def _raise_line_error(path, line_number, line, n_fields, label_max):
    where = f"{path}, line {line_number}"
    if not line.strip():
        raise InputError(
            f"{where} is empty: each line needs the label followed by the pixel "
            "values; remove blank lines"
        )
    fields = line.split(b",")
    if line_number == 1 and not _is_number(fields[0]):
        raise InputError(
            f"{where} looks like a header row (it starts with "
            f"{_show(line[:40])}): the format has no header, remove that line"
        )
    if len(fields) != n_fields:
        raise InputError(
            f"{where} has {len(fields)} comma-separated values, but line 1 has "
            f"{n_fields}: every line needs the label and the same number of pixel "
            "values"
        )
    for index, field in enumerate(fields):
        if index == 0:
            role, maximum = "label", label_max
        else:
            role, maximum = f"pixel {index} of {n_fields - 1}", MAX_PIXEL
        problem = _cell_problem(field, 0, maximum)
        if problem is not None:
            raise InputError(
                f"{where}, field {index + 1} ({role}): {problem}; expected "
                f"{_describe_range(maximum)}"
            )
    raise AssertionError(f"{where}: no error found in a line the parser rejected")


def _cell_problem(text, minimum, maximum):
    """Return what is wrong with a cell in words, or None if it is valid."""
    if not text.strip():
        return "missing value (empty field)"
    if text.isdigit():
        value = int(text)
        return None if value <= maximum else f"value {value} is out of range"
    try:
        value = int(text)
    except ValueError:
        pass
    else:
        if minimum <= value <= maximum:
            return f"invalid value {_show(text)}, not written with plain digits"
        return f"value {value} is out of range"
    if _is_number(text):
        return f"value {_show(text)} is not an integer"
    return f"{_show(text)} is not a number"


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe_range(maximum):
    if maximum == _INT64_MAX:
        return "a non-negative integer"
    return f"an integer in 0..{maximum}"


def _show(raw):
    text = raw.decode("utf-8", errors="replace")
    if len(text) > 40:
        text = text[:40] + "..."
    return repr(text)


# Writing


def format_pixel_rows(X):
    """Format each row of pixels as the text that follows the label on a CSV line.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Integer pixel values in 0..255.

    Returns
    -------
    list of bytes
        For each row ``b",p1,p2,...,pd\\n"``, so that ``b"%d" % label + text`` is
        the row's CSV line.

    Raises
    ------
    ValueError
        If ``X`` is not two-dimensional or contains values that are not integers
        in 0..255.
    """
    X = _as_pixel_array(X)
    n_rows, n_features = X.shape
    texts = []
    tokens = np.empty((min(FORMAT_BLOCK_ROWS, n_rows), n_features + 1), np.uint32)
    for start in range(0, n_rows, FORMAT_BLOCK_ROWS):
        block = X[start : start + FORMAT_BLOCK_ROWS]
        block_tokens = tokens[: len(block)]

        # Each pixel becomes the 4 bytes ",v" padded with zero bytes, and the zero
        # bytes are then dropped.
        np.take(_PIXEL_TOKENS, block, out=block_tokens[:, :n_features])
        block_tokens[:, n_features] = _NEWLINE
        raw = block_tokens.view(np.uint8).reshape(-1)
        text = np.compress(raw != 0, raw).tobytes()

        # A row takes 2 bytes per pixel, plus 1 per pixel >= 10 and 1 per pixel >=
        # 100, plus the line end.
        lengths = (
            2 * n_features
            + 1
            + np.count_nonzero(block >= 10, axis=1)
            + np.count_nonzero(block >= 100, axis=1)
        )
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        texts.extend(text[a:b] for a, b in zip(starts, ends))
    return texts


def _make_pixel_tokens():
    table = np.zeros((MAX_PIXEL + 1, 4), dtype=np.uint8)
    for value in range(MAX_PIXEL + 1):
        token = b",%d" % value
        table[value, : len(token)] = np.frombuffer(token, dtype=np.uint8)
    return table.view(np.uint32).reshape(-1)


_PIXEL_TOKENS = _make_pixel_tokens()


def _as_pixel_array(X):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array of pixels, got shape {X.shape}")
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X)
    if X.size and not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"X must hold numbers, got dtype {X.dtype}")
    if X.size and (np.any(X != np.round(X)) or X.min() < 0 or X.max() > MAX_PIXEL):
        raise ValueError(
            f"X must hold integers in 0..{MAX_PIXEL}, got values in "
            f"{X.min()}..{X.max()} (dtype {X.dtype})"
        )
    return np.ascontiguousarray(X, dtype=np.uint8)


def write_rows(path, labels, row_texts):
    """Write a labelled CSV file from labels and preformatted pixel texts.

    The file is written atomically (see :func:`atomic_write`), and gzip-compressed
    when ``path`` ends with ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file. Its folder must exist.
    labels : sequence of int or ndarray of shape (n_rows,)
        Non-negative integer labels.
    row_texts : sequence of bytes
        One text per label, as :func:`format_pixel_rows` returns.

    Raises
    ------
    ValueError
        If the lengths differ or a label is not a non-negative integer.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(row_texts):
        raise ValueError(
            f"got {labels.size} labels (shape {labels.shape}) for {len(row_texts)} "
            "rows: give one label per row"
        )
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
    ):
        raise ValueError(
            f"labels must be non-negative integers, got dtype {labels.dtype} "
            f"with minimum {labels.min()}"
        )

    parts = []
    for label, text in zip(labels.tolist(), row_texts):
        parts.append(b"%d" % label)
        parts.append(text)
    content = b"".join(parts)
    if str(path).endswith(".gz"):
        content = gzip.compress(content, compresslevel=6, mtime=0)
    with atomic_write(path) as file:
        file.write(content)
    logger.debug("wrote %d rows to %s", len(labels), path)


def write_labelled_csv(path, X, y):
    """Write pixels and labels as a labelled CSV file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, gzip-compressed when the name ends with ``.gz``.
    X : array-like of shape (n_rows, n_features)
        Integer pixel values in 0..255.
    y : array-like of shape (n_rows,)
        Non-negative integer labels.
    """
    write_rows(path, y, format_pixel_rows(X))
