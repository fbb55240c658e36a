"""Tests of the benchmarks: smoke runs on tiny sizes and their building blocks.

The grid benchmark's smoke run checks that every stage runs and reports its
targets, and that the correctness targets pass. The Dask benchmark's smoke run
checks that its three runs write identical results and that its clusters stop.
Neither checks a timing, because the figures are meaningful only at the default
sizes.
"""

import json
import math
import os
import sys
import types
from pathlib import Path

import pytest

from benchmarks import bench_dask, bench_grid, timers
from benchmarks.projection import (
    MeasuredCosts,
    PowerLaw,
    TrainingSet,
    distinct_training_sets,
    fit_power_law,
    list_training_sets,
    project_study_grid,
)
from benchmarks.stages import STAGES, compare_results, read_results
from benchmarks.timers import Probe, measure_command, timed_calls
from crowdpoison.cli import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def test_bench_grid_quick_run(mnist_dir, tmp_path, capsys):
    work_dir = tmp_path / "work"
    report_path = tmp_path / "bench.json"
    argv = ["--quick", "--mnist-dir", str(mnist_dir), "--work-dir", str(work_dir)]
    status = bench_grid.main([*argv, "--json", str(report_path), "--quiet"])
    output = capsys.readouterr().out

    assert status == 0
    report = json.loads(report_path.read_text())
    assert list(report["stages"]) == list(STAGES)
    numbers = {target["number"] for target in report["targets"]}
    assert numbers == {"1", "2", "3", "4", "5", "6", "7"}
    correctness = [target for target in report["targets"] if target["correctness"]]
    assert [target["name"] for target in correctness] == [
        "identical results",
        "two cores, same results",
    ]
    assert all(target["passed"] for target in correctness)
    assert report["stages"]["exact"]["figures"]["differences"] == []
    assert report["stages"]["exact"]["figures"]["n_cells"] > 0
    assert report["projection"]["n_cells"] > 0
    for title in ("exact", "memory", "projection of the full study grid", "summary"):
        assert f"== {title}" in output
    assert "[PASS] 1 identical results" in output
    assert (work_dir / "results" / "naive-n1.csv").is_file()


def test_bench_grid_stages_subset(mnist_dir, tmp_path, capsys):
    argv = ["--quick", "--mnist-dir", str(mnist_dir), "--stages", "loading"]
    status = bench_grid.main([*argv, "--work-dir", str(tmp_path / "work"), "-q"])
    output = capsys.readouterr().out

    assert status == 0
    assert "[PASS] 5 loading" in output
    assert "skipped: needs the stages one-core, knn" in output
    assert "== exact" not in output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--levels", "0", "21"], r"--levels 21: a level is a number of malicious"),
        (["--full-levels", "30"], r"--full-levels 30: .* pass levels in 0\.\.20"),
        (["--train-rows", "60001"], r"--train-rows 60001: MNIST has 60000 images"),
        (["--test-rows", "10001"], r"--test-rows 10001: MNIST has 10000 images"),
        (["--models", "LR", "KNN(2)"], r"--models: unknown model 'KNN\(2\)'"),
    ],
)
def test_bench_grid_rejects_bad_flags(mnist_dir, tmp_path, extra, message):
    argv = ["--quick", "--mnist-dir", str(mnist_dir), "--work-dir", str(tmp_path)]
    with pytest.raises(InputError, match=message):
        bench_grid.main([*argv, *extra, "-q"])


def test_bench_grid_rejects_work_dir_in_repository():
    argv = ["--mnist-dir", "/nonexistent", "--work-dir", str(REPO_ROOT / "bench")]
    with pytest.raises(InputError, match=r"is inside the repository"):
        bench_grid.main([*argv, "-q"])


def test_bench_grid_rejects_non_empty_work_dir(tmp_path):
    (tmp_path / "left.txt").write_text("x")
    argv = ["--mnist-dir", "/nonexistent", "--work-dir", str(tmp_path)]
    with pytest.raises(InputError, match=r"is not an empty folder"):
        bench_grid.main([*argv, "-q"])


def test_bench_grid_requires_mnist_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    with pytest.raises(InputError, match=r"--mnist-dir is missing"):
        bench_grid.main(["--work-dir", str(tmp_path), "-q"])


def test_bench_grid_rejects_unknown_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_grid.main(["--stages", "speed"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'speed'" in capsys.readouterr().err


# Results comparison

CELL = (3, "LR", 0, 100)
OTHER_CELL = (3, "KNN(1)", 0, 100)


def test_compare_results_equal_runs():
    rows = {CELL: 0.5, OTHER_CELL: -0.25}
    assert compare_results(rows, dict(rows)) == []


@pytest.mark.parametrize(
    "reference, candidate, expected",
    [
        ({CELL: 0.5}, {CELL: 0.5000000000000001}, "naive 0.5, fast 0.5000000000000001"),
        ({CELL: 0.5, OTHER_CELL: 0.1}, {CELL: 0.5}, "missing from the fast engine's"),
        ({CELL: 0.5}, {CELL: 0.5, OTHER_CELL: 0.1}, "missing from the naive engine's"),
        ({CELL: math.nan}, {CELL: 0.0}, "naive nan, fast 0.0"),
    ],
)
def test_compare_results_lists_differences(reference, candidate, expected):
    differences = compare_results(reference, candidate)
    assert len(differences) == 1
    assert expected in differences[0]


def test_compare_results_nan_equals_nan():
    assert compare_results({CELL: math.nan}, {CELL: math.nan}) == []


def test_compare_results_names_the_cell():
    (line,) = compare_results({CELL: 0.5}, {CELL: 0.25})
    assert line.startswith("seed 3, LR, malicious 0, dataset_len 100:")


def test_read_results_parses_keys_and_mcc(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(
        "seed,model,malicious,dataset_len,mcc\n3,KNN(1),2,50,0.30000000000000004\n"
    )
    assert read_results(path) == {(3, "KNN(1)", 2, 50): 0.30000000000000004}


# Timers and memory


def test_timed_calls_records_and_restores():
    namespace = types.SimpleNamespace(double=lambda value: 2 * value)
    original = namespace.double
    probe = Probe(
        namespace, "double", "double", lambda args, kwargs, result: {"n": result}
    )
    with timed_calls([probe]) as records:
        assert namespace.double(4) == 8
    assert namespace.double is original
    assert len(records) == 1
    assert records[0].label == "double"
    assert records[0].details == {"n": 8}
    assert records[0].wall >= 0


def test_timers_main_requires_separator(tmp_path):
    with pytest.raises(InputError, match=r"missing '--' before the run_ml.py"):
        timers.main([str(tmp_path / "timings.json"), "-i", "runs"])


def test_measure_command_sees_peak_memory():
    allocate = "import time; data = b'x' * 200_000_000; time.sleep(0.5)"
    measurement = measure_command([sys.executable, "-c", allocate], interval=0.02)
    assert measurement.returncode == 0
    assert measurement.max_rss >= 200 * MB
    assert measurement.tree_rss >= 200 * MB


def test_measure_command_counts_child_processes():
    child = "import time; time.sleep(0.5)"
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    )
    measurement = measure_command([sys.executable, "-c", parent], interval=0.02)
    assert measurement.returncode == 0
    assert measurement.max_processes >= 2


def test_measure_command_reports_exit_status():
    measurement = measure_command([sys.executable, "-c", "raise SystemExit(3)"])
    assert measurement.returncode == 3


# Projection


def test_fit_power_law_recovers_exponent():
    sizes = [1_000, 2_000, 8_000]
    law = fit_power_law(sizes, [0.5 * size**1.5 for size in sizes])
    assert law.exponent == pytest.approx(1.5)
    assert law.scale == pytest.approx(0.5)


def test_fit_power_law_single_size_is_linear():
    law = fit_power_law([100, 100], [1.0, 3.0])
    assert law.exponent == 1.0
    assert law(300) == pytest.approx(6.0)


@pytest.mark.parametrize(
    "sizes, seconds, message",
    [
        ([], [], r"at least one"),
        ([10, 20], [1.0], r"as many sizes as costs"),
        ([10, 0], [1.0, 2.0], r"must be positive"),
        ([10, 20], [1.0, -2.0], r"must be positive"),
    ],
)
def test_fit_power_law_rejects_bad_points(sizes, seconds, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(sizes, seconds)


def write_level(folder, level, batches):
    level_dir = folder / str(level)
    level_dir.mkdir(parents=True)
    for number, lines in enumerate(batches, start=1):
        (level_dir / f"dataset_{number:03d}.csv").write_text("".join(lines))


def test_list_training_sets_shares_identical_prefixes(tmp_path):
    trusted = ["1,0,0\n", "2,0,255\n"]
    write_level(tmp_path, 0, [trusted, ["3,9,9\n"]])
    write_level(tmp_path, 5, [trusted, ["4,9,9\n", "5,1,1\n"]])
    training_sets = list_training_sets(tmp_path)

    assert [(ts.level, ts.batch, ts.n_rows) for ts in training_sets] == [
        (0, 1, 2),
        (0, 2, 3),
        (5, 1, 2),
        (5, 2, 4),
    ]
    distinct = distinct_training_sets(training_sets)
    assert [(ts.level, ts.batch) for ts in distinct] == [(0, 1), (0, 2), (5, 2)]


def test_project_study_grid_sums_costs():
    training_sets = [
        TrainingSet(0, 1, 10, "trusted"),
        TrainingSet(1, 1, 10, "trusted"),
        TrainingSet(0, 2, 20, "level-0"),
        TrainingSet(1, 2, 20, "level-1"),
    ]
    costs = MeasuredCosts(
        fit_laws={"LR": PowerLaw(1.0, 1.0)},
        knn_seconds=5.0,
        loading_seconds=1.0,
        other_share=0.5,
        fit_speedup=2.0,
        n_workers=2,
        generation_seconds=3.0,
    )
    projection = project_study_grid(
        training_sets, n_seeds=2, n_models=12, costs=costs, n_cpus=2
    )
    # Per experiment: fits 2 seeds x (10 + 20 + 20) s = 100 s, other 50 s,
    # KNN 5 s and loading 1 s; 12 experiments.
    assert projection.n_experiments == 12
    assert projection.n_cells == 12 * 4 * 2 * 12
    assert projection.fast_cpu_hours == pytest.approx(12 * 156 / 3600)
    assert projection.fast_wall_hours == pytest.approx(12 * (56 + 50) / 3600)
    assert projection.parts["fits"] == pytest.approx(12 * 100 / 3600)
    assert projection.naive_cpu_hours is None
    # 3 behaviours x 4 vote settings x 2 levels x 3 s x (16 / 4 / 3 votes).
    assert projection.generation_hours == pytest.approx(12 * 2 * 3 * 4 / 3 / 3600)


def test_project_study_grid_naive_from_fit_laws():
    training_sets = [TrainingSet(0, 1, 10, "trusted"), TrainingSet(0, 2, 20, "a")]
    unit = PowerLaw(1.0, 1.0)
    costs = MeasuredCosts(
        fit_laws=dict.fromkeys(("LR", "SVM", "DT", "ANN", "RF"), unit),
        knn_seconds=0.0,
        loading_seconds=0.0,
        other_share=0.0,
        knn_seconds_per_row=0.5,
        loadtxt_seconds_per_row=0.25,
    )
    projection = project_study_grid(
        training_sets, n_seeds=2, n_models=12, costs=costs, n_cpus=2
    )
    # Per training set and seed: 11 fits of n seconds (LR, DT, ANN three times,
    # SVM and RF once), 7 predictions of n / 2 s and loading of n / 4 s.
    per_seed = (11 + 7 * 0.5 + 0.25) * (10 + 20)
    assert projection.naive_cpu_hours == pytest.approx(12 * 2 * per_seed / 3600)
    assert projection.naive_wall_hours == pytest.approx(12 * per_seed / 3600)


# The Dask benchmark

needs_dask = pytest.mark.skipif(
    not bench_dask.DASK_COMMAND.is_file(),
    reason=f"the dask command {bench_dask.DASK_COMMAND} is missing",
)
# The hex form of 127.0.0.1 and ::1 in /proc/net/tcp and tcp6.
LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000"}
TCP_LISTEN = "0A"


def _processes_mentioning(text):
    """Return the ids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _live_processes(process_groups):
    """Return the /proc folders of the processes in these groups, zombies aside."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the command name start with the state, ppid and pgrp.
        state, _, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) in process_groups and state != "Z":
            found.append(entry)
    return found


def _listening_hosts(process_groups):
    """Return the hex local address of each TCP socket listening in the groups."""
    inodes = set()
    for entry in _live_processes(process_groups):
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
    hosts = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == TCP_LISTEN and fields[9] in inodes:
                hosts.append(fields[1].split(":")[0])
    return hosts


@needs_dask
def test_bench_dask_quick_run(mnist_dir, tmp_path, capsys):
    work_dir = tmp_path / "work"
    report_path = tmp_path / "bench-dask.json"
    argv = ["--quick", "--mnist-dir", str(mnist_dir), "--work-dir", str(work_dir)]
    status = bench_dask.main([*argv, "--json", str(report_path), "--quiet"])
    output = capsys.readouterr().out

    assert status == 0
    report = json.loads(report_path.read_text())
    assert report["identical"] is True
    runs = report["runs"]
    assert [run["name"] for run in runs] == ["local", "cluster-1", "cluster-2"]
    assert [run["workers"] for run in runs] == [0, 1, 2]
    local = runs[0]
    assert local["n_tasks"] > 0
    for run in runs[1:]:
        assert run["identical"] is True
        assert run["cluster_stopped_cleanly"] is True
        assert run["scheduler"].startswith("tcp://127.0.0.1:")
        # One Dask task per fit of the local run.
        assert run["n_tasks"] == local["n_tasks"]
        n, task, elapsed = run["n_tasks"], run["task_seconds"], run["run_seconds"]
        assert run["speedup"] == pytest.approx(local["wall"] / run["wall"])
        assert run["overhead_per_task"] == pytest.approx((elapsed - task) / n)
        workers = run["workers"]
        assert run["idle_per_task"] == pytest.approx((workers * elapsed - task) / n)
    reference = (work_dir / "results" / "local.csv").read_bytes()
    assert (work_dir / "results" / "cluster-2.csv").read_bytes() == reference
    for title in (
        "local reference",
        "cluster of 1 worker process (",
        "cluster of 2 worker processes",
        "summary",
    ):
        assert f"== {title}" in output
    assert "results: byte-identical to the local reference" in output
    assert "(2 R - T) / N = " in output
    assert _processes_mentioning(str(work_dir / "clusters")) == []


@needs_dask
def test_command_cluster_loopback_and_interrupt(tmp_path):
    cluster = bench_dask.CommandCluster(tmp_path / "cluster", 1)
    with pytest.raises(KeyboardInterrupt), cluster:
        assert cluster.address.startswith("tcp://127.0.0.1:")
        hosts = _listening_hosts(set(cluster.pids.values()))
        # The scheduler's and the worker's TCP and HTTP servers, and the nanny's.
        assert len(hosts) >= 5
        assert set(hosts) <= LOOPBACK_HEX
        raise KeyboardInterrupt
    assert set(cluster.pids) == {"scheduler", "worker"}
    # A killed helper may stay a zombie until init reaps it.
    assert _live_processes(set(cluster.pids.values())) == []
    assert cluster.stopped_cleanly is True


def test_parse_task_line_takes_the_last():
    line = (
        "INFO crowdpoison.dask_backend: Dask: {} tasks, {} s of task time on the "
        "workers, {} s from submission to the last result\n"
    )
    text = (
        "progress\r" + line.format(3, "1.5", "2.0") + line.format(35, "99.9", "120.4")
    )
    assert bench_dask.parse_task_line(text) == (35, 99.9, 120.4)
    assert bench_dask.parse_task_line("no such line") is None


def test_first_difference_names_the_line(tmp_path):
    reference, candidate = tmp_path / "reference.csv", tmp_path / "candidate.csv"
    reference.write_text("header\n3,LR,0,10,0.5\n")
    candidate.write_text("header\n3,LR,0,10,0.25\n")
    assert bench_dask.first_difference(reference, reference) is None
    assert bench_dask.first_difference(reference, candidate).startswith("line 2: ")
    candidate.write_text("header\n")
    assert (
        bench_dask.first_difference(reference, candidate) == "line count 1 instead of 2"
    )


def test_bench_dask_requires_mnist_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    with pytest.raises(InputError, match=r"--mnist-dir is missing"):
        bench_dask.main(["--work-dir", str(tmp_path), "-q"])


def test_bench_dask_rejects_unknown_model(tmp_path):
    argv = ["--mnist-dir", "/nonexistent", "--work-dir", str(tmp_path)]
    with pytest.raises(InputError, match=r"--models: unknown model 'KNN\(2\)'"):
        bench_dask.main([*argv, "--models", "KNN(2)", "-q"])
