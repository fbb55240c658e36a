"""End-to-end tests of the scripts in process_results/ through their main()."""

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crowdpoison.cli import run
from crowdpoison.results import RESULT_COLUMNS
from process_results import (
    _figures,
    compare_aggregation,
    get_results,
    merge_results,
    plot_ml_data,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
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
        (["--model", "LR", "x={missing}"], "missing.csv: not found"),
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


# A --manifest must describe the generation that the results sidecar records.


def sidecar_for(manifest_path, **generation):
    """Return a results sidecar as run_ml.py writes it for ``manifest_path``."""
    manifest = json.loads(manifest_path.read_text())
    recorded = {
        "n_bots": manifest["parameters"]["n_bots"],
        "behavior": manifest["parameters"]["behavior"],
        "n_trusted": manifest["n_trusted"],
        "manifest": str(manifest_path.resolve()),
    }
    return {"format": "crowdpoison-results/1", "generation": {**recorded, **generation}}


def test_get_results_rejects_other_seed_manifest(capsys, tmp_path):
    used = write_manifest(tmp_path / "seed1", seed=1)
    other = write_manifest(tmp_path / "seed2", seed=2, scale=2.0)
    results = write_results(tmp_path / "results.csv", sidecar=sidecar_for(used))
    argv = [str(results), "--manifest", str(other.parent), "--format", "text"]
    status = run(get_results.main, argv)
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "seed is 2 instead of 1" in captured.err


def test_manifest_mismatch_names_both(capsys, tmp_path):
    used = write_manifest(tmp_path / "seed1", seed=1)
    other = write_manifest(tmp_path / "seed2", seed=2)
    results = write_results(tmp_path / "results.csv", sidecar=sidecar_for(used))
    status = run(get_results.main, [str(results), "--manifest", str(other)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"--manifest {other} " in err
    assert f"(manifest {used.resolve()})" in err


def test_manifest_checked_against_sidecar_values(capsys, tmp_path):
    # The manifest that the sidecar names is gone; the values it copied remain.
    used = write_manifest(tmp_path / "gone", behavior="random")
    sidecar = sidecar_for(used)
    used.unlink()
    other = write_manifest(tmp_path / "switch", behavior="switch")
    results = write_results(tmp_path / "results.csv", sidecar=sidecar)
    argv = [str(results), "--manifest", str(other), "-q"]
    assert_user_error(
        capsys, get_results.main, argv, "behavior is 'switch' instead of 'random'"
    )


def test_manifest_copy_accepted(capsys, tmp_path):
    used = write_manifest(tmp_path / "seed1", seed=1)
    copy = tmp_path / "copy" / "manifest.json"
    copy.parent.mkdir()
    copy.write_text(used.read_text())
    results = write_results(tmp_path / "results.csv", sidecar=sidecar_for(used))
    argv = [str(results), "--manifest", str(copy), "--format", "markdown", "-q"]
    assert get_results.main(argv) == 0
    assert "| LR | 50% (2/4) | 150 | 13.3% |" in capsys.readouterr().out


def test_manifest_without_sidecar_accepted(capsys, tmp_path):
    manifest = write_manifest(tmp_path / "gen", seed=5)
    results = write_results(tmp_path / "results.csv")
    argv = [str(results), "--manifest", str(manifest), "--format", "markdown", "-q"]
    assert get_results.main(argv) == 0
    assert "| LR | 50% (2/4) | 150 | 13.3% |" in capsys.readouterr().out


def test_changed_sidecar_manifest_ignored(capsys, caplog, tmp_path):
    # The generation folder was generated again with another number of bots.
    used = write_manifest(tmp_path / "gen")
    sidecar = sidecar_for(used, n_bots=8)
    results = write_results(tmp_path / "results.csv", sidecar=sidecar)
    with caplog.at_level("WARNING"):
        assert get_results.main([str(results), "--format", "markdown", "-q"]) == 0
    out = capsys.readouterr().out
    assert "n_bots is 4 instead of 8" in caplog.text
    assert "Poisoned shares from" not in out
    assert "~" in out


def test_plot_ml_data_rejects_other_manifest(capsys, tmp_path):
    used = write_manifest(tmp_path / "seed1", seed=1)
    other = write_manifest(tmp_path / "seed2", seed=2)
    results = write_results(tmp_path / "results.csv", sidecar=sidecar_for(used))
    output = tmp_path / "figure.png"
    argv = [str(results), "--manifest", str(other), "-o", str(output)]
    assert_user_error(capsys, plot_ml_data.main, argv, "seed is 2 instead of 1")
    assert not output.exists()


# Missing results in the grid


def write_results_with_hole(path, *, seed=SEEDS[0], model="LR", malicious=N_BOTS):
    """Write a results CSV without the rows of one seed, model and level."""
    write_results(path)
    lines = path.read_text().splitlines(keepends=True)
    prefix = f"{seed},{model},{malicious},"
    path.write_text("".join(line for line in lines if not line.startswith(prefix)))
    return path


def missing_warnings(caplog):
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelname == "WARNING"
        and "(seed, malicious, dataset_len)" in record.getMessage()
    ]


def test_get_results_warns_missing_results(capsys, caplog, tmp_path):
    results = write_results_with_hole(tmp_path / "holes.csv")
    with caplog.at_level("WARNING"):
        assert get_results.main([str(results), "--bots", "4", "-q"]) == 0
    (message,) = missing_warnings(caplog)
    # 2 seeds x 5 levels x 3 sizes; the 3 rows of seed 3 at level 4 are missing.
    assert "model LR lacks 3 of its 30" in message
    assert "seed 3, malicious 4, dataset_len 100" in message
    assert "\n" not in message
    assert "Breaking points" in capsys.readouterr().out


def test_get_results_full_grid_no_warning(caplog, results_path):
    with caplog.at_level("WARNING"):
        assert get_results.main([str(results_path), "--bots", "4", "-q"]) == 0
    assert missing_warnings(caplog) == []


def test_plot_ml_data_warns_missing_results(caplog, tmp_path):
    results = write_results_with_hole(tmp_path / "holes.csv", model="RF", malicious=0)
    output = tmp_path / "figure.png"
    argv = [str(results), "--bots", "4", "--models", "RF", "-o", str(output), "-q"]
    with caplog.at_level("WARNING"):
        assert plot_ml_data.main(argv) == 0
    (message,) = missing_warnings(caplog)
    assert "model RF lacks 3 of its 30" in message
    assert output.stat().st_size > 0


# Labelled inputs


@pytest.mark.parametrize(
    "template, message",
    [
        ("={path}", "has an empty label before '='"),
        (" ={path}", "has an empty label before '='"),
        ("label=", "has no path after '='"),
    ],
)
def test_merge_results_empty_label_or_path(
    capsys, monkeypatch, tmp_path, results_path, template, message
):
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "LR", template.format(path=results_path.name)]
    assert_user_error(capsys, merge_results.main, argv, message)


def test_compare_aggregation_empty_label(capsys, tmp_path, results_path):
    manifest = write_manifest(tmp_path / "run")
    argv = [str(manifest), "--results", f"={results_path}", "--model", "LR"]
    argv += ["--bots", "4", "-o", str(tmp_path / "c.png")]
    assert_user_error(
        capsys, compare_aggregation.main, argv, "--results '=" + str(results_path)
    )


# Figures without -o need a display


def headless(monkeypatch):
    """Remove the display variables from the environment of this test."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.mark.parametrize("backend", [None, "TkAgg"])
def test_plot_ml_data_headless_without_output(tmp_path, results_path, backend):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")
    }
    if backend is not None:
        env["MPLBACKEND"] = backend
    script = REPO_ROOT / "process_results" / "plot_ml_data.py"
    completed = subprocess.run(
        [sys.executable, str(script), str(results_path), "--bots", "4"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1
    assert "plot_ml_data.py: error: no -o given and no display" in completed.stderr
    assert "pass -o FILE.png, FILE.pdf or FILE.svg" in completed.stderr
    assert list(tmp_path.iterdir()) == [results_path]


def test_compare_aggregation_headless_without_output(capsys, monkeypatch, tmp_path):
    headless(monkeypatch)
    manifest = write_manifest(tmp_path / "run")
    assert_user_error(
        capsys,
        compare_aggregation.main,
        [str(manifest)],
        "no display is available",
    )


def test_window_backend_needs_display(monkeypatch):
    import matplotlib

    headless(monkeypatch)
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "tkagg")
    monkeypatch.setattr(sys, "platform", "linux")
    assert _figures.missing_display() == "DISPLAY and WAYLAND_DISPLAY are unset"
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert _figures.missing_display() is None
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")
    assert "cannot open a window" in _figures.missing_display()


# Examples in --help


SCRIPTS = [get_results, merge_results, plot_ml_data, compare_aggregation]


def help_examples(parser):
    """Return the example commands of a parser's epilog as argument lists."""
    text = parser.epilog.split("examples:\n", 1)[1].replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda module: module.__name__)
def test_help_examples_parse(capsys, module):
    parser = module.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "\nexamples:\n" in capsys.readouterr().out

    script = f"process_results/{module.__name__.rsplit('.', 1)[1]}.py"
    flags = {flag for action in parser._actions for flag in action.option_strings}
    examples = help_examples(parser)
    assert 2 <= len(examples) <= 3
    for command in examples:
        assert command[:2] == ["python", script]
        assert (REPO_ROOT / script).is_file()
        used = [arg for arg in command[2:] if arg.startswith("-")]
        assert set(used) <= flags, command
        parser.parse_args(command[2:])
