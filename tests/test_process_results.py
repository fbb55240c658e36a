"""End-to-end tests of the scripts in process_results/ through their main()."""

import csv
import json

import pytest

from crowdpoison.cli import run
from crowdpoison.results import RESULT_COLUMNS
from process_results import (
    compare_aggregation,
    get_results,
    merge_results,
    plot_ml_data,
)

N_BOTS = 4
LENGTHS = (100, 150, 200)
SEEDS = (3, 7)


def synthetic_mcc(model, malicious, dataset_len, seed):
    """MCC of a toy run: LR breaks at 2 malicious bots and 150 rows, RF never."""
    if model == "RF":
        return 0.95 - 0.01 * malicious
    broken = malicious >= 2 and dataset_len >= 150
    base = 0.3 if broken else 0.9
    return base - 0.01 * (seed == SEEDS[0])


def write_results(path, *, models=("LR", "RF"), sidecar=None):
    """Write a results CSV for malicious 0..N_BOTS, LENGTHS and SEEDS."""
    lines = ["seed,model,malicious,dataset_len,mcc"]
    for seed in SEEDS:
        for model in models:
            for malicious in range(N_BOTS + 1):
                for length in LENGTHS:
                    mcc = synthetic_mcc(model, malicious, length, seed)
                    lines.append(f"{seed},{model},{malicious},{length},{mcc!r}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if sidecar is not None:
        path.with_name(path.name + ".meta.json").write_text(json.dumps(sidecar))
    return path


def write_manifest(
    folder, *, aggregation=None, behavior="switch", scale=1.0, **parameters
):
    """Write a generation manifest for N_BOTS bots with 100 trusted rows."""
    folder.mkdir(parents=True, exist_ok=True)
    levels = {}
    for malicious in range(N_BOTS + 1):
        batches = []
        poisoned = 0
        for index, length in enumerate(LENGTHS):
            if index:
                poisoned += int(10 * malicious * scale)
            batches.append({"cumulative_rows": length, "cumulative_poisoned": poisoned})
        levels[str(malicious)] = {
            "malicious": malicious,
            "complete": True,
            "accepted": 100,
            "poisoned": poisoned,
            "batches": batches,
        }
    parameters = {"n_bots": N_BOTS, "behavior": behavior, **parameters}
    if aggregation is not None:
        parameters["aggregation"] = aggregation
    manifest = {
        "format": "crowdpoison-generation/1",
        "parameters": parameters,
        "n_trusted": 100,
        "levels": levels,
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def results_path(tmp_path):
    return write_results(tmp_path / "results.csv")


def assert_user_error(capsys, main, argv, message):
    """Check that ``main(argv)`` exits with 2 and one stderr line with ``message``."""
    status = run(main, argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert message in err


# get_results.py


def test_get_results_text_table(capsys, results_path):
    argv = [str(results_path), "--bots", "4", "--format", "text", "-q"]
    assert get_results.main(argv) == 0
    out = capsys.readouterr().out
    breaking = out.split("Breaking points")[1].splitlines()
    lr_row = next(line for line in breaking if line.startswith("LR "))
    rf_row = next(line for line in breaking if line.startswith("RF "))
    assert lr_row.split() == ["LR", "50%", "(2/4)", "150", "~16.7%"]
    assert rf_row.split() == ["RF", "--", "--", "--"]
    assert "min over 2 seeds" in out
    assert "~ Estimated share" in out


def test_get_results_breaking_point_share_estimated(capsys, results_path):
    get_results.main([str(results_path), "--bots", "4", "--format", "markdown", "-q"])
    out = capsys.readouterr().out
    # (150 - 100 trusted) x 2 / 4 bots / 150 rows = 16.7 %.
    assert "| LR | 50% (2/4) | 150 | ~16.7% |" in out
    assert "| RF | -- | -- | -- |" in out


def test_get_results_manifest_share(capsys, tmp_path):
    manifest_path = write_manifest(tmp_path / "gen")
    results = write_results(
        tmp_path / "results.csv",
        sidecar={"generation": {"n_bots": N_BOTS, "manifest": str(manifest_path)}},
    )
    assert get_results.main([str(results), "--format", "markdown", "-q"]) == 0
    out = capsys.readouterr().out
    # Level 2, 150 rows: 20 poisoned of 150.
    assert "| LR | 50% (2/4) | 150 | 13.3% |" in out
    assert "~" not in out


def test_get_results_first_drop_and_agg(capsys, results_path):
    argv = [str(results_path), "--bots", "4", "--format", "text", "--models", "LR"]
    get_results.main([*argv, "--agg", "max", "-q"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("LR "))
    # max over seeds: best 0.900, first drop 0.300 at 2 malicious and 150 rows.
    assert row.split()[1] == "0.900"
    assert "0.300" in row
    assert "RF" not in out.split("Breaking points")[1]


def test_get_results_writes_files(capsys, tmp_path, results_path):
    output = tmp_path / "table.md"
    argv = [str(results_path), "--bots", "4", "--format", "markdown"]
    get_results.main([*argv, "-o", str(output), "-q"])
    assert output.read_text().count("| LR |") == 2

    both = tmp_path / "tables.out"
    get_results.main([str(results_path), "--bots", "4", "-o", str(both), "-q"])
    assert "LR" in (tmp_path / "tables.txt").read_text()
    assert "| LR |" in (tmp_path / "tables.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "pass --bots N"),
        (["--bots", "2"], "--bots 2 is smaller"),
        (["--bots", "4", "--models", "SVM"], "--models SVM: not found"),
        (["--bots", "4", "--manifest", "absent.json"], "absent.json not found"),
    ],
)
def test_get_results_bad_input(capsys, results_path, extra, message):
    assert_user_error(capsys, get_results.main, [str(results_path), *extra], message)


def test_get_results_bad_csv(capsys, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("seed,model,malicious,dataset_len,mcc\n1,LR,0,100,2.0\n")
    argv = [str(path), "--bots", "4"]
    assert_user_error(capsys, get_results.main, argv, "line 2: mcc")


def test_get_results_bad_threshold(capsys, results_path):
    with pytest.raises(SystemExit) as exit_info:
        get_results.main([str(results_path), "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "expected a number in (-1, 1]" in capsys.readouterr().err


# merge_results.py


def read_csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_merge_results_labels(tmp_path):
    random_path = write_results(tmp_path / "res_random.csv")
    switch_path = write_results(tmp_path / "res_switch.csv", models=("LR",))
    output = tmp_path / "merged.csv"
    status = merge_results.main(
        ["--model", "LR", f"random={random_path}", str(switch_path), "-o", str(output)]
    )
    assert status == 0
    rows = read_csv_rows(output)
    per_file = len(SEEDS) * (N_BOTS + 1) * len(LENGTHS)
    assert len(rows) == 2 * per_file
    assert list(rows[0]) == [*RESULT_COLUMNS, "attack"]
    assert {row["model"] for row in rows} == {"LR"}
    assert [row["attack"] for row in rows[::per_file]] == ["random", "res_switch"]
    assert float(rows[0]["mcc"]) == synthetic_mcc("LR", 0, 100, SEEDS[0])


def test_merge_results_stdout(capsys, results_path):
    assert merge_results.main(["--model", "RF", f"a={results_path}", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed,model,malicious,dataset_len,mcc,attack\n")
    assert out.rstrip().endswith(",a")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "SVM", "{path}"], "--model SVM: not found in"),
        (["--model", "LR", "x={path}", "x={path}"], "have the same label 'x'"),
        (["--model", "LR", "x={missing}"], "No such file"),
    ],
)
def test_merge_results_bad_input(capsys, tmp_path, results_path, args, message):
    missing = tmp_path / "missing.csv"
    argv = [arg.format(path=results_path, missing=missing) for arg in args]
    assert_user_error(capsys, merge_results.main, argv, message)


# plot_ml_data.py


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_plot_ml_data_single_model(tmp_path, results_path, suffix):
    output = tmp_path / f"single{suffix}"
    argv = [str(results_path), "--bots", "4", "--models", "LR", "-o", str(output), "-q"]
    assert plot_ml_data.main(argv) == 0
    assert output.stat().st_size > 0


def test_plot_ml_data_several_models(tmp_path, results_path):
    output = tmp_path / "several.png"
    argv = [str(results_path), "--bots", "4", "--models", "LR", "RF", "--agg", "mean"]
    assert plot_ml_data.main([*argv, "-o", str(output), "-q"]) == 0
    assert output.stat().st_size > 0


def test_plot_ml_data_never_breaks(tmp_path, results_path):
    output = tmp_path / "rf.svg"
    argv = [str(results_path), "--bots", "4", "--models", "RF", "--title", "RF"]
    assert plot_ml_data.main([*argv, "-o", str(output), "-q"]) == 0
    assert "never breaks" in output.read_text()


def test_plot_ml_data_heatmap(tmp_path, results_path):
    output = tmp_path / "heat.pdf"
    argv = [str(results_path), "--bots", "4", "--heatmap", "-o", str(output), "-q"]
    assert plot_ml_data.main(argv) == 0
    assert output.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-o", "figure.txt"], "unsupported figure format '.txt'"),
        (["-o", "no/such/folder/figure.png"], "not found; create it first"),
        (["--models", "DT", "-o", "figure.png"], "--models DT: not found"),
    ],
)
def test_plot_ml_data_bad_input(capsys, tmp_path, results_path, extra, message):
    extra = [
        str(tmp_path / arg) if arg.startswith(("figure", "no/")) else arg
        for arg in extra
    ]
    argv = [str(results_path), "--bots", "4", *extra]
    assert_user_error(capsys, plot_ml_data.main, argv, message)


# compare_aggregation.py


def test_compare_aggregation_poisoned_panel(tmp_path):
    runs = [
        write_manifest(tmp_path / "majority"),
        write_manifest(tmp_path / "majority2", scale=1.2),
        write_manifest(tmp_path / "ds", aggregation="dawid-skene", scale=0.5),
    ]
    output = tmp_path / "compare.png"
    argv = [str(runs[0].parent), str(runs[1]), str(runs[2].parent)]
    argv += ["-o", str(output), "-q"]
    assert compare_aggregation.main(argv) == 0
    assert output.stat().st_size > 0


def test_compare_aggregation_group_shares(tmp_path):
    runs = compare_aggregation.load_runs(
        [
            write_manifest(tmp_path / "a"),
            write_manifest(tmp_path / "b", aggregation="majority", scale=2.0),
        ]
    )
    groups = compare_aggregation.group_runs(runs)
    summary, n_runs = groups[("majority", "switch")]
    assert n_runs == 2
    # Level 4 of 4 bots: 80 and 160 poisoned of 100 accepted.
    last = summary.iloc[-1]
    assert last["malicious_share"] == 1.0
    assert last["mean"] == pytest.approx(1.2)
    assert last["min"] == pytest.approx(0.8)


def test_compare_aggregation_splits_differing_parameters(tmp_path):
    runs = compare_aggregation.load_runs(
        [
            write_manifest(tmp_path / "a", assignment="random", seed=1),
            write_manifest(tmp_path / "b", assignment="random", seed=2),
            write_manifest(tmp_path / "c", assignment="round-robin", seed=1),
        ]
    )
    groups = compare_aggregation.group_runs(runs)
    assert set(groups) == {
        ("majority", "switch", "assignment=random"),
        ("majority", "switch", "assignment=round-robin"),
    }
    assert groups[("majority", "switch", "assignment=random")][1] == 2
    assert groups[("majority", "switch", "assignment=round-robin")][1] == 1


def test_compare_aggregation_mcc_panel(tmp_path):
    manifest = write_manifest(tmp_path / "ds", aggregation="dawid-skene")
    with_sidecar = write_results(
        tmp_path / "res_ds.csv",
        sidecar={"generation": {"n_bots": N_BOTS, "manifest": str(manifest)}},
    )
    plain = write_results(tmp_path / "res_plain.csv")
    output = tmp_path / "compare.svg"
    argv = [
        str(manifest.parent),
        "--results",
        str(with_sidecar),
        f"baseline={plain}",
        "--model",
        "LR",
        "--bots",
        "4",
        "-o",
        str(output),
        "-q",
    ]
    assert compare_aggregation.main(argv) == 0
    text = output.read_text()
    assert "dawid-skene, switch" in text
    assert "baseline" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "LR"], "--model needs --results"),
        (["--results", "{results}"], "--results needs --model"),
        (
            ["--results", "{results}", "--model", "SVM", "--bots", "4"],
            "--model SVM: not found",
        ),
        (["--results", "{results}", "--model", "LR"], "pass --bots N"),
    ],
)
def test_compare_aggregation_bad_input(capsys, tmp_path, results_path, extra, message):
    manifest = write_manifest(tmp_path / "run")
    extra = [arg.format(results=results_path) for arg in extra]
    argv = [str(manifest), *extra, "-o", str(tmp_path / "c.png")]
    assert_user_error(capsys, compare_aggregation.main, argv, message)


def test_compare_aggregation_missing_run(capsys, tmp_path):
    argv = [str(tmp_path / "absent"), "-o", str(tmp_path / "c.png")]
    assert_user_error(capsys, compare_aggregation.main, argv, "not found")
