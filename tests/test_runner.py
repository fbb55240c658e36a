"""Unit tests of the grid runner: results file, generated folder, executor, digests."""

import json
import logging

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from crowdpoison.cli import InputError
from crowdpoison.csvio import write_labelled_csv
from crowdpoison.executor import LokyExecutor, SharedArray, resolve
from crowdpoison.grid import (
    discover_levels,
    generation_info,
    grid_fingerprint,
    scan_levels,
    select_levels,
)
from crowdpoison.resultsfile import (
    HEADER,
    ResultsWriter,
    canonical_order,
    format_mcc,
    prepare_output,
    read_existing_rows,
    write_sidecar,
)
from crowdpoison.runner import _batches

KEYS = {(3, "LR", 0, 10), (3, "KNN(1)", 0, 10), (7, "LR", 0, 10), (3, "LR", 2, 10)}


def test_format_mcc_is_repr():
    assert format_mcc(np.float64(0.1) + np.float64(0.2)) == "0.30000000000000004"
    assert format_mcc(1) == "1.0"


def test_canonical_order_sorts_level_len_seed_model():
    keys = [(7, "LR", 0, 10), (3, "VF(soft)", 0, 10), (3, "LR", 2, 5), (3, "LR", 0, 10)]
    assert sorted(keys, key=canonical_order) == [
        (3, "LR", 0, 10),
        (3, "VF(soft)", 0, 10),
        (7, "LR", 0, 10),
        (3, "LR", 2, 5),
    ]


def test_results_writer_appends_then_sorts(tmp_path):
    path = tmp_path / "out.csv"
    writer = ResultsWriter(path, {(7, "LR", 0, 10): "0.5"})
    writer.add({(3, "LR", 2, 10): 0.25})
    writer.add({(3, "LR", 0, 10): -0.125})
    assert path.read_text().splitlines()[1:] == [
        "7,LR,0,10,0.5",
        "3,LR,2,10,0.25",
        "3,LR,0,10,-0.125",
    ]
    writer.finish()
    assert path.read_text() == (
        f"{HEADER}\n3,LR,0,10,-0.125\n7,LR,0,10,0.5\n3,LR,2,10,0.25\n"
    )


def test_read_existing_rows_drops_torn_line(tmp_path, caplog):
    path = tmp_path / "out.csv"
    path.write_text(f"{HEADER}\n3,LR,0,10,0.5\n3,KNN(1),0,1")
    with caplog.at_level(logging.WARNING):
        rows = read_existing_rows(path, KEYS)
    assert rows == {(3, "LR", 0, 10): "0.5"}
    assert "torn last line" in caplog.text


def test_read_existing_rows_drops_unparsable_last_line(tmp_path, caplog):
    path = tmp_path / "out.csv"
    path.write_text(f"{HEADER}\n3,LR,0,10,0.5\n3,LR,0,1\n")
    with caplog.at_level(logging.WARNING):
        rows = read_existing_rows(path, KEYS)
    assert rows == {(3, "LR", 0, 10): "0.5"}
    assert "unparsable last line" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n3,LR,0,10,0.5\n", "expected the header"),
        (f"{HEADER}\n3,LR,0,10,x\n3,LR,2,10,0.5\n", "line 2: invalid row"),
        (f"{HEADER}\n3,LR,0,10,2.5\n3,LR,2,10,0.5\n", "line 2: invalid row"),
        (f"{HEADER}\n3,RF,0,10,0.5\n", "not part of this grid"),
    ],
)
def test_read_existing_rows_rejects_invalid(tmp_path, text, message):
    path = tmp_path / "out.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_existing_rows(path, KEYS)


PARAMETERS = {
    "models": ["LR"],
    "seeds": [3],
    "levels": [0],
    "data_sha256": "a",
    "test_sha256": "b",
    "input": "/x",
}


def test_prepare_output_new_and_resume(tmp_path):
    path = tmp_path / "out.csv"
    assert prepare_output(path, PARAMETERS, overwrite=False) is False
    path.write_text(f"{HEADER}\n")
    write_sidecar(path, PARAMETERS, {})
    # Paths are not compared: the same data elsewhere resumes.
    moved = {**PARAMETERS, "input": "/elsewhere"}
    assert prepare_output(path, moved, overwrite=False) is True
    assert prepare_output(path, {**PARAMETERS, "seeds": [4]}, overwrite=True) is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": ["RF"]}, "models differ"),
        ({"levels": [0, 2]}, "levels differ"),
        ({"data_sha256": "c"}, "data_sha256 differ"),
        ({"test_sha256": "c"}, "test_sha256 differ"),
    ],
)
def test_prepare_output_rejects_other_parameters(tmp_path, change, message):
    path = tmp_path / "out.csv"
    path.write_text(f"{HEADER}\n")
    write_sidecar(path, PARAMETERS, {})
    with pytest.raises(InputError, match=f"{message}.*--overwrite"):
        prepare_output(path, {**PARAMETERS, **change}, overwrite=False)


def test_prepare_output_rejects_missing_sidecar(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text(f"{HEADER}\n")
    with pytest.raises(InputError, match="no readable sidecar.*--overwrite"):
        prepare_output(path, PARAMETERS, overwrite=False)


def _write_level(folder, level, sizes, *, n_features=4, complete=None):
    rng = np.random.default_rng(level)
    level_dir = folder / str(level)
    level_dir.mkdir(parents=True)
    for number, size in enumerate(sizes, start=1):
        X = rng.integers(0, 256, size=(size, n_features))
        write_labelled_csv(
            level_dir / f"dataset_{number:03d}.csv", X, np.arange(size) % 3
        )
    if complete is not None:
        (level_dir / "level.json").write_text(json.dumps({"complete": complete}))


def test_discover_levels_reads_folder(tmp_path):
    _write_level(tmp_path, 10, [3, 2], complete=False)
    _write_level(tmp_path, 2, [3, 4, 1], complete=True)
    (tmp_path / ".level-4.tmp").mkdir()
    (tmp_path / "notes").mkdir()
    levels = discover_levels(tmp_path)
    assert [level.malicious for level in levels] == [2, 10]
    assert [level.complete for level in levels] == [True, False]
    scan_levels(levels, n_features=4)
    assert levels[0].batch_rows == [3, 4, 1]
    assert levels[0].dataset_lengths() == [3, 7, 8]
    assert len(grid_fingerprint(levels)) == 64
    assert [level.malicious for level in select_levels(levels, [10])] == [10]


def test_scan_levels_fingerprint_follows_content(tmp_path):
    _write_level(tmp_path / "a", 0, [3, 2])
    _write_level(tmp_path / "b", 0, [3, 2])
    first = discover_levels(tmp_path / "a")
    second = discover_levels(tmp_path / "b")
    scan_levels(first, n_features=4)
    scan_levels(second, n_features=4)
    assert grid_fingerprint(first) == grid_fingerprint(second)
    path = tmp_path / "b" / "0" / "dataset_002.csv"
    text = path.read_text()
    path.write_text(("2" if text[0] != "2" else "1") + text[1:])
    scan_levels(second, n_features=4)
    assert grid_fingerprint(first) != grid_fingerprint(second)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "not found"),
        ("empty", "no batch files found"),
        ("gap", "lacks batch files dataset_002.csv"),
    ],
)
def test_discover_levels_rejects_invalid(tmp_path, setup, message):
    folder = tmp_path / "gen"
    if setup != "missing":
        folder.mkdir()
    if setup == "gap":
        _write_level(folder, 0, [2, 2, 2])
        (folder / "0" / "dataset_002.csv").unlink()
    with pytest.raises(InputError, match=message):
        discover_levels(folder)


def test_select_levels_rejects_missing(tmp_path):
    _write_level(tmp_path, 0, [2])
    with pytest.raises(InputError, match="--levels 4: no such level.*has levels 0"):
        select_levels(discover_levels(tmp_path), [0, 4])


def test_scan_levels_rejects_pixel_count(tmp_path):
    _write_level(tmp_path, 0, [2], n_features=5)
    with pytest.raises(
        InputError, match="5 pixel values per row but the test data has 4"
    ):
        scan_levels(discover_levels(tmp_path), n_features=4)


def test_generation_info_without_manifest(tmp_path):
    info = generation_info(tmp_path)
    assert info == dict.fromkeys(
        (
            "n_bots",
            "n_trusted",
            "n_rows",
            "behavior",
            "n_votes",
            "assignment",
            "manifest",
        )
    )


def test_batches_digest_equal_for_equal_prefix(tmp_path):
    _write_level(tmp_path, 0, [3, 2])
    _write_level(tmp_path, 1, [3, 2])
    levels = discover_levels(tmp_path)
    scan_levels(levels, n_features=4)
    X = np.arange(20, dtype=np.uint8).reshape(5, 4)
    y = np.array([0, 1, 2, 0, 1])
    other_y = np.array([0, 1, 2, 1, 1])
    first = _batches(levels[0], X, y)
    second = _batches(levels[1], X, other_y)
    assert [batch.n_rows for batch in first] == [3, 5]
    assert first[0].digest == second[0].digest
    assert first[1].digest != second[1].digest
    assert first[1].classes.tolist() == [0, 1, 2]


def _task_report(value, offset):
    array = resolve(value)
    threads = {info["user_api"]: info["num_threads"] for info in threadpool_info()}
    return float(array.sum()) + offset, threads


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_loky_executor_shares_arrays_one_thread(tmp_path, n_jobs):
    array = np.arange(12.0).reshape(3, 4)
    with LokyExecutor(n_jobs, temp_dir=tmp_path) as executor:
        handle = executor.share(array)
        assert isinstance(handle, SharedArray)
        assert handle.shape == (3, 4)
        tasks = [
            (offset, _task_report, {"value": handle, "offset": offset})
            for offset in range(4)
        ]
        results = dict(executor.run(tasks))
        executor.release(handle)
    assert sorted(results) == [0, 1, 2, 3]
    for offset, (total, threads) in results.items():
        assert total == 66.0 + offset
        assert all(count == 1 for count in threads.values())
    assert not list(tmp_path.glob("*.npy"))
