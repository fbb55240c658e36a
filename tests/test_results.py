"""Tests of crowdpoison.results: reading, aggregation, statistics, breaking points."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdpoison.cli import InputError
from crowdpoison.results import (
    CELL_COLUMNS,
    RESULT_COLUMNS,
    Cell,
    PoisonedShareSource,
    aggregate_seeds,
    breaking_point,
    estimated_poisoned_share,
    is_broken,
    load_results_context,
    log_missing_results,
    manifest_differences,
    manifest_poisoned_share,
    mcc_grid,
    model_stats,
    parse_labelled_path,
    read_manifest,
    read_results,
    read_sidecar,
    resolve_n_bots,
    resolve_trusted_rows,
    select_models,
    sort_models,
    summarize_models,
)

HEADER = "seed,model,malicious,dataset_len,mcc\n"
HIGH = 0.9
LOW = 0.1


def make_grid(rows, malicious=None, lengths=(10, 20, 30)):
    """Build an MCC grid from a list of rows; 'H' is HIGH, 'L' is LOW, None is NaN."""
    values = {"H": HIGH, "L": LOW, None: np.nan}
    data = [[values.get(cell, cell) for cell in row] for row in rows]
    index = list(malicious) if malicious is not None else list(range(len(rows)))
    return pd.DataFrame(data, index=index, columns=list(lengths), dtype=float)


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# Breaking point


def test_breaking_point_never_breaks():
    grid = make_grid([["H", "H", "H"], ["H", "H", "H"]])
    assert breaking_point(grid, 0.7) is None


def test_breaking_point_largest_corner_above_threshold():
    # Every cell but the largest corner is low: the corner alone keeps it unbroken.
    grid = make_grid([["L", "L", "L"], ["L", "L", "H"]])
    assert breaking_point(grid, 0.7) is None


def test_breaking_point_diagonal_walk():
    grid = make_grid(
        [
            ["H", "H", "H"],
            ["H", "L", "L"],
            ["H", "L", "L"],
        ]
    )
    assert breaking_point(grid, 0.7) == (1, 20)


def test_breaking_point_diagonal_then_malicious_walk():
    grid = make_grid(
        [
            ["H", "H", "H"],
            ["H", "L", "L"],
            ["H", "L", "L"],
            ["H", "L", "L"],
        ]
    )
    # Diagonal (3, 30) -> (2, 20), then malicious alone to (1, 20).
    assert breaking_point(grid, 0.7) == (1, 20)


def test_breaking_point_malicious_walk_only():
    grid = make_grid(
        [
            ["H", "H", "H"],
            ["H", "H", "L"],
            ["H", "H", "L"],
            ["H", "H", "L"],
        ]
    )
    assert breaking_point(grid, 0.7) == (1, 30)


def test_breaking_point_dataset_walk_only():
    grid = make_grid(
        [
            ["H", "H", "H"],
            ["H", "H", "H"],
            ["L", "L", "L"],
        ]
    )
    assert breaking_point(grid, 0.7) == (2, 10)


def test_breaking_point_non_monotone_grid():
    # The high cell (2, 20) blocks the diagonal step and the dataset walk, but not
    # the malicious walk along the last column.
    grid = make_grid(
        [
            ["H", "H", "H"],
            ["L", "L", "L"],
            ["L", "H", "L"],
            ["L", "L", "L"],
        ]
    )
    assert breaking_point(grid, 0.7) == (1, 30)


def test_breaking_point_whole_grid_broken():
    grid = make_grid([["L", "L"], ["L", "L"]], lengths=(10, 20))
    assert breaking_point(grid, 0.7) == (0, 10)


def test_breaking_point_uses_grid_values_not_positions():
    grid = make_grid(
        [["H", "H", "H"], ["H", "L", "L"], ["H", "L", "L"]],
        malicious=(0, 5, 10),
        lengths=(18000, 22200, 26400),
    )
    assert breaking_point(grid, 0.7) == (5, 22200)


def test_breaking_point_threshold_is_strict():
    grid = make_grid([[0.7, 0.7], [0.7, 0.7]], lengths=(10, 20))
    assert breaking_point(grid, 0.7) is None
    assert breaking_point(grid, 0.71) == (0, 10)


def test_is_broken_ignores_missing_cells():
    grid = make_grid([["H", "H"], ["L", None]], lengths=(10, 20))
    assert is_broken(grid, 1, 10, 0.7)
    assert not is_broken(grid, 1, 20, 0.7)


# Statistics


def test_model_stats_best_first_drop_worst():
    grid = make_grid([[0.9, 0.95], [0.6, 0.8], [0.5, 0.65]], lengths=(10, 20))
    stats = model_stats(grid, 0.7)
    assert stats.best == Cell(0, 20, 0.95)
    assert stats.first_drop == Cell(1, 10, 0.6)
    assert stats.worst == Cell(2, 10, 0.5)


def test_model_stats_first_drop_orders_malicious_first():
    # (0, 20) comes before (1, 10) although its dataset is larger.
    grid = make_grid([[0.9, 0.6], [0.5, 0.9]], lengths=(10, 20))
    assert model_stats(grid, 0.7).first_drop == Cell(0, 20, 0.6)


def test_model_stats_ties_go_to_first_cell():
    grid = make_grid([[0.9, 0.9], [0.2, 0.2]], lengths=(10, 20))
    stats = model_stats(grid, 0.7)
    assert stats.best == Cell(0, 10, 0.9)
    assert stats.worst == Cell(1, 10, 0.2)


def test_model_stats_no_drop():
    grid = make_grid([["H", "H"]], lengths=(10, 20))
    assert model_stats(grid, 0.7).first_drop is None


def test_model_stats_empty_grid_raises():
    grid = make_grid([[None, None]], lengths=(10, 20))
    with pytest.raises(ValueError, match="no value"):
        model_stats(grid)


# Aggregation over seeds


def seed_results():
    return pd.DataFrame(
        {
            "seed": [1, 2, 3, 1, 2, 3],
            "model": ["LR"] * 6,
            "malicious": [0, 0, 0, 1, 1, 1],
            "dataset_len": [10] * 6,
            "mcc": [0.9, 0.6, 0.75, 0.2, 0.4, 0.3],
        }
    )


@pytest.mark.parametrize(
    "how, expected",
    [
        ("min", [0.6, 0.2]),
        ("max", [0.9, 0.4]),
        ("mean", [0.75, 0.3]),
        ("median", [0.75, 0.3]),
    ],
)
def test_aggregate_seeds_values(how, expected):
    aggregated = aggregate_seeds(seed_results(), how)
    assert aggregated["mcc"].tolist() == pytest.approx(expected)
    assert aggregated["n_seeds"].tolist() == [3, 3]
    assert list(aggregated.columns) == [*CELL_COLUMNS, "mcc", "n_seeds"]


def test_aggregate_seeds_invalid_method():
    with pytest.raises(ValueError, match="how='sum' is invalid"):
        aggregate_seeds(seed_results(), "sum")


def test_aggregate_seeds_warns_uneven_seeds(caplog):
    results = seed_results().iloc[:-1]
    aggregated = aggregate_seeds(results, "min")
    assert aggregated["n_seeds"].tolist() == [3, 2]
    assert "between 2 and 3 seeds" in caplog.text


def test_mcc_grid_reads_axes_from_data():
    results = pd.DataFrame(
        {
            "seed": [1, 1, 1, 1],
            "model": ["DT"] * 4,
            "malicious": [7, 3, 7, 3],
            "dataset_len": [500, 500, 90, 90],
            "mcc": [0.1, 0.2, 0.3, 0.4],
        }
    )
    grid = mcc_grid(aggregate_seeds(results), "DT")
    assert list(grid.index) == [3, 7]
    assert list(grid.columns) == [90, 500]
    assert grid.at[7, 90] == pytest.approx(0.3)


def test_summarize_models_breaks_and_never_breaks():
    rows = []
    for malicious in (0, 1, 2):
        for length in (10, 20):
            low = malicious >= 1
            rows.append((1, "LR", malicious, length, 0.1 if low else 0.9))
            rows.append((1, "RF", malicious, length, 0.9))
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    summaries = summarize_models(aggregate_seeds(results), ["LR", "RF"], 0.7)
    assert summaries[0].breaking_point == (1, 10)
    assert summaries[1].breaking_point is None
    assert summaries[0].n_seeds == 1


# Poisoned share


def manifest_with_batch(malicious=5, rows=30000, poisoned=2400):
    return {
        "format": "crowdpoison-generation/1",
        "parameters": {"n_bots": 20},
        "n_trusted": 18000,
        "levels": {
            str(malicious): {
                "malicious": malicious,
                "batches": [
                    {"cumulative_rows": 18000, "cumulative_poisoned": 0},
                    {"cumulative_rows": rows, "cumulative_poisoned": poisoned},
                ],
            }
        },
    }


def test_estimated_poisoned_share_formula():
    share = estimated_poisoned_share(5, 30000, n_bots=20, n_trusted=18000)
    assert share == pytest.approx(12000 * 5 / 20 / 30000)


def test_estimated_poisoned_share_trusted_rows_only():
    assert estimated_poisoned_share(20, 18000, n_bots=20, n_trusted=18000) == 0.0


def test_manifest_poisoned_share_measured():
    manifest = manifest_with_batch()
    assert manifest_poisoned_share(manifest, 5, 30000) == pytest.approx(0.08)
    assert manifest_poisoned_share(manifest, 5, 18000) == 0.0


def test_manifest_poisoned_share_missing_cell():
    manifest = manifest_with_batch()
    assert manifest_poisoned_share(manifest, 6, 30000) is None
    assert manifest_poisoned_share(manifest, 5, 31000) is None


def test_poisoned_share_source_estimate_vs_manifest():
    measured = PoisonedShareSource(
        n_bots=20, n_trusted=18000, manifest=manifest_with_batch()
    )
    share = measured(5, 30000)
    assert share.value == pytest.approx(0.08)
    assert not share.is_estimate

    fallback = measured(6, 30000)
    assert fallback.is_estimate
    assert fallback.value == pytest.approx(12000 * 6 / 20 / 30000)
    assert measured.n_missing == 1

    estimated = PoisonedShareSource(n_bots=20, n_trusted=18000)(5, 30000)
    assert estimated.is_estimate
    assert estimated.value == pytest.approx(0.1)


# Reading results files


def test_read_results_types(tmp_path):
    text = HEADER + "3,KNN(1),2,100,0.5\n7,LR,0,100,-0.25\n"
    path = write_csv(tmp_path / "r.csv", text)
    results = read_results(path)
    assert results["seed"].tolist() == [3, 7]
    assert results["model"].tolist() == ["KNN(1)", "LR"]
    assert results["mcc"].tolist() == [0.5, -0.25]
    assert str(results["dataset_len"].dtype) == "int64"


def test_read_results_skips_blank_lines(tmp_path):
    path = write_csv(tmp_path / "r.csv", HEADER + "3,LR,2,100,0.5\n\n")
    assert len(read_results(path)) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("seed,model,mcc\n1,LR,0.5\n", "line 1: header is 'seed,model,mcc'"),
        (HEADER, "no result rows"),
        (HEADER + "1,LR,0,100\n", "line 2: expected 5 fields"),
        (HEADER + "x,LR,0,100,0.5\n", "line 2: seed 'x' is not an integer"),
        (HEADER + "1,,0,100,0.5\n", "line 2: model is empty"),
        (HEADER + "1,LR,-1,100,0.5\n", "line 2: malicious -1 is invalid"),
        (HEADER + "1,LR,0,0,0.5\n", "line 2: dataset_len 0 is invalid"),
        (HEADER + "1,LR,0,1.5,0.5\n", "line 2: dataset_len '1.5' is not an integer"),
        (HEADER + "1,LR,0,100,abc\n", "line 2: mcc 'abc' is not a number"),
        (HEADER + "1,LR,0,100,nan\n", "line 2: mcc 'nan' is invalid"),
        (HEADER + "1,LR,0,100,inf\n", "line 2: mcc 'inf' is invalid"),
        (
            HEADER + "1,LR,0,100,1.5\n",
            r"line 2: mcc '1.5' is invalid; expected .* \[-1, 1\]",
        ),
        (
            HEADER + "1,LR,0,100,0.5\n1,LR,1,100,0.5\n1,LR,0,100,0.6\n",
            r"line 4: duplicate result .*\(first on line 2\)",
        ),
    ],
)
def test_read_results_invalid(tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(InputError, match=message):
        read_results(path)


def test_read_results_message_names_file(tmp_path):
    path = write_csv(tmp_path / "named.csv", HEADER + "1,LR,0,100,2\n")
    with pytest.raises(InputError, match="named.csv line 2"):
        read_results(path)


def test_read_results_clamps_rounding_error(tmp_path):
    path = write_csv(tmp_path / "r.csv", HEADER + "1,LR,0,100,1.0000000000000002\n")
    assert read_results(path)["mcc"].tolist() == [1.0]


def test_read_results_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "absent.csv")


# Sidecar, manifest, n_bots


def test_read_sidecar_absent_is_empty(tmp_path):
    assert read_sidecar(tmp_path / "r.csv") == {}


@pytest.mark.parametrize(
    "text, message", [("{", "not valid JSON"), ("[1]", "contains a JSON list")]
)
def test_read_sidecar_invalid(tmp_path, text, message):
    (tmp_path / "r.csv.meta.json").write_text(text)
    with pytest.raises(InputError, match=message):
        read_sidecar(tmp_path / "r.csv")


def test_read_manifest_from_folder(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest_with_batch()))
    assert read_manifest(tmp_path)["n_trusted"] == 18000


@pytest.mark.parametrize(
    "content, message",
    [
        ({"format": "other/1"}, "has format 'other/1'"),
        ({"levels": [1, 2]}, "'levels' is a list"),
    ],
)
def test_read_manifest_invalid(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=message):
        read_manifest(path)


def test_read_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path)


def test_resolve_n_bots_sources():
    results = pd.DataFrame({"malicious": [0, 4], "dataset_len": [10, 20]})
    sidecar = {"generation": {"n_bots": 8}}
    manifest = {"parameters": {"n_bots": 6}}
    assert resolve_n_bots(results, bots=5, sidecar=sidecar, manifest=manifest) == 5
    assert resolve_n_bots(results, sidecar=sidecar, manifest=manifest) == 8
    assert resolve_n_bots(results, manifest=manifest) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "number of bots of input is unknown.*pass --bots"),
        ({"bots": 3}, "--bots 3 is smaller than the largest number of malicious"),
        ({"sidecar": {"generation": {"n_bots": "20"}}}, "generation.n_bots is '20'"),
    ],
)
def test_resolve_n_bots_invalid(kwargs, message):
    results = pd.DataFrame({"malicious": [0, 4], "dataset_len": [10, 20]})
    with pytest.raises(InputError, match=message):
        resolve_n_bots(results, **kwargs)


def test_resolve_trusted_rows_sources():
    results = pd.DataFrame({"malicious": [0, 4], "dataset_len": [150, 200]})
    assert resolve_trusted_rows(results) == 150
    sidecar = {"generation": {"n_trusted": 120}}
    assert resolve_trusted_rows(results, sidecar=sidecar) == 120
    assert (
        resolve_trusted_rows(
            results,
            sidecar={"generation": {"n_trusted": 120}},
            manifest={"n_trusted": 100},
        )
        == 100
    )


def test_load_results_context_follows_sidecar(tmp_path):
    manifest_path = tmp_path / "gen" / "manifest.json"
    manifest_path.parent.mkdir()
    manifest_path.write_text(json.dumps(manifest_with_batch()))
    results_path = write_csv(tmp_path / "r.csv", HEADER + "1,LR,5,30000,0.5\n")
    sidecar = {"generation": {"manifest": str(manifest_path), "n_trusted": 18000}}
    (tmp_path / "r.csv.meta.json").write_text(json.dumps(sidecar))

    context = load_results_context(results_path)
    assert context.n_bots == 20
    assert context.n_trusted == 18000
    assert context.manifest_path == manifest_path
    assert not context.poisoned_share_source()(5, 30000).is_estimate


def test_select_models_order_and_missing():
    results = pd.DataFrame({"model": ["RF", "LR", "Custom", "KNN(1)"]})
    assert select_models(results) == ["LR", "KNN(1)", "RF", "Custom"]
    assert select_models(results, ["RF", "LR"]) == ["RF", "LR"]
    with pytest.raises(InputError, match="--models SVM: not found"):
        select_models(results, ["SVM"])


def test_sort_models_unknown_last():
    assert sort_models(["b", "VF(soft)", "a", "LR"]) == ["LR", "VF(soft)", "b", "a"]


def test_parse_labelled_path(tmp_path):
    assert parse_labelled_path("random=res.csv") == ("random", Path("res.csv"))
    assert parse_labelled_path("dir/res_switch.csv")[0] == "res_switch"
    odd = tmp_path / "a=b.csv"
    odd.write_text("")
    assert parse_labelled_path(str(odd)) == ("a=b", odd)


@pytest.mark.parametrize(
    "text, message",
    [
        ("=res.csv", "input '=res.csv' has an empty label before '='"),
        ("  =res.csv", "has an empty label before '='"),
        ("random=", "input 'random=' has no path after '='"),
    ],
)
def test_parse_labelled_path_empty_parts(text, message):
    with pytest.raises(InputError, match=message):
        parse_labelled_path(text)


def test_parse_labelled_path_names_the_argument():
    with pytest.raises(InputError, match="^--results '=res.csv' has an empty label"):
        parse_labelled_path("=res.csv", name="--results")


def test_parse_labelled_path_existing_equals_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("=res.csv").write_text("")
    assert parse_labelled_path("=res.csv") == ("=res", Path("=res.csv"))


# Missing results


def grid_csv(skip=()):
    """Return a results CSV for seeds 1 2, models LR DT, levels 0 4, sizes 10 20."""
    lines = [HEADER.rstrip("\n")]
    for seed in (1, 2):
        for model in ("LR", "DT"):
            for malicious in (0, 4):
                for length in (10, 20):
                    if (seed, model, malicious, length) not in skip:
                        lines.append(f"{seed},{model},{malicious},{length},0.5")
    return "\n".join(lines) + "\n"


def test_log_missing_results_full_grid(tmp_path, caplog):
    results = read_results(write_csv(tmp_path / "r.csv", grid_csv()))
    assert log_missing_results(results, source="r.csv") == {}
    assert caplog.records == []


def test_log_missing_results_counts_and_example(tmp_path, caplog):
    skip = {(1, "DT", 4, 10), (1, "DT", 4, 20), (2, "DT", 0, 20)}
    results = read_results(write_csv(tmp_path / "r.csv", grid_csv(skip)))
    with caplog.at_level("WARNING"):
        assert log_missing_results(results, source="r.csv") == {"DT": 3}
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith(
        "r.csv: model DT lacks 3 of its 8 (seed, malicious, dataset_len) results, "
        "for example seed 1, malicious 4, dataset_len 10;"
    )


def test_log_missing_results_whole_seed(tmp_path, caplog):
    skip = {(2, "LR", m, d) for m in (0, 4) for d in (10, 20)}
    results = read_results(write_csv(tmp_path / "r.csv", grid_csv(skip)))
    with caplog.at_level("WARNING"):
        assert log_missing_results(results) == {"LR": 4}
    assert "seed 2, malicious 0, dataset_len 10" in caplog.text


def test_context_warns_missing_results(tmp_path, caplog):
    path = write_csv(tmp_path / "r.csv", grid_csv({(2, "LR", 4, 20)}))
    with caplog.at_level("WARNING"):
        context = load_results_context(path, bots=4)
    assert len(context.results) == 15
    assert "model LR lacks 1 of its 8" in caplog.text


# Manifest against the results sidecar


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def generation_manifest(**parameters):
    manifest = manifest_with_batch()
    manifest["parameters"] = {"n_bots": 20, "behavior": "random", **parameters}
    manifest["input"] = {"sha256": "a" * 64}
    manifest["n_rows"] = 60000
    return manifest


def recorded_sidecar(manifest_path, manifest):
    generation = {
        "manifest": str(manifest_path),
        "n_bots": manifest["parameters"]["n_bots"],
        "behavior": manifest["parameters"]["behavior"],
        "n_trusted": manifest["n_trusted"],
        "n_rows": manifest["n_rows"],
        "n_votes": None,
        "assignment": None,
    }
    return {"generation": generation}


def test_manifest_differences_without_sidecar():
    assert manifest_differences({}, "m.json", generation_manifest(seed=9)) == []


def test_manifest_differences_recorded_values(tmp_path):
    named = tmp_path / "gone" / "manifest.json"
    sidecar = recorded_sidecar(named, generation_manifest())
    other = generation_manifest(n_bots=30)
    other["n_trusted"] = 9000
    assert manifest_differences(sidecar, tmp_path / "m.json", other) == [
        ("n_bots", 30, 20),
        ("n_trusted", 9000, 18000),
    ]


def test_manifest_differences_compares_with_named_manifest(tmp_path):
    recorded = generation_manifest(seed=1, levels=[0, 5])
    named = write_json(tmp_path / "a" / "manifest.json", recorded)
    sidecar = recorded_sidecar(named, recorded)

    same = generation_manifest(seed=1, levels=[0, 5, 10])
    assert manifest_differences(sidecar, tmp_path / "copy", same) == []
    other_seed = generation_manifest(seed=2, levels=[0, 5])
    assert manifest_differences(sidecar, tmp_path / "b", other_seed) == [("seed", 2, 1)]
    other_input = generation_manifest(seed=1)
    other_input["input"] = {"sha256": "b" * 64}
    (difference,) = manifest_differences(sidecar, tmp_path / "b", other_input)
    assert difference[0] == "input sha256"


def test_context_rejects_other_manifest(tmp_path):
    recorded = generation_manifest(seed=1)
    named = write_json(tmp_path / "a" / "manifest.json", recorded)
    other = write_json(tmp_path / "b" / "manifest.json", generation_manifest(seed=2))
    results_path = write_csv(tmp_path / "r.csv", HEADER + "1,LR,5,30000,0.5\n")
    write_json(tmp_path / "r.csv.meta.json", recorded_sidecar(named, recorded))

    with pytest.raises(InputError) as error:
        load_results_context(results_path, manifest=other.parent)
    message = str(error.value)
    assert message.startswith(f"--manifest {other.parent} describes another generation")
    assert f"(manifest {named})" in message
    assert "seed is 2 instead of 1" in message
    assert "\n" not in message

    context = load_results_context(results_path, manifest=named.parent)
    assert context.manifest is not None


def test_context_drops_changed_manifest(tmp_path, caplog):
    named = write_json(tmp_path / "a" / "manifest.json", generation_manifest())
    sidecar = recorded_sidecar(named, generation_manifest(n_bots=10))
    results_path = write_csv(tmp_path / "r.csv", HEADER + "1,LR,5,30000,0.5\n")
    write_json(tmp_path / "r.csv.meta.json", sidecar)

    with caplog.at_level("WARNING"):
        context = load_results_context(results_path)
    assert context.manifest is None
    assert context.n_bots == 10
    assert "n_bots is 20 instead of 10" in caplog.text
