"""Smoke test of the benchmark command (``python -m pooling_lib.bench``): it runs, and its output is complete
and consistent. No timing is asserted: the machine's speed is not under test."""
import csv
import math
import sys
import time

import pytest

from pooling_lib import bench, functional


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_times_ratios_and_plot(quick_run):
    assert (quick_run / "times.csv").stat().st_size > 0
    assert (quick_run / "ratios.csv").stat().st_size > 0
    png = (quick_run / "times.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_implementation_is_timed_for_every_case(quick_run):
    rows = _read(quick_run / "times.csv")
    expected = {"naive", "numpy", "memory-limit"}
    if "cython" in functional.available_backends():
        expected |= {"cython", "cython-nhwc"}
    if "torch" in sys.modules or _has_torch():
        expected |= {"torch", "torch-channels_last"}
    cases = {(r["dtype"], r["config"], r["op"], r["pass"]) for r in rows if r["impl"] != "copy"}
    # 2 dtypes x 2 configs x 2 ops x 2 passes
    assert len(cases) == 16
    for case in cases:
        timed = {r["impl"] for r in rows if (r["dtype"], r["config"], r["op"], r["pass"]) == case}
        assert expected <= timed, (case, expected - timed)
    copies = [r for r in rows if r["impl"] == "copy"]
    assert {(r["dtype"], r["config"]) for r in copies} == {(d, c) for d, c, _, _ in cases}


def test_times_are_positive_and_naive_is_scaled(quick_run):
    rows = _read(quick_run / "times.csv")
    for r in rows:
        assert float(r["time_ms"]) > 0, r
        assert 0 < float(r["min_ms"]) <= float(r["time_ms"]) + 1e-12, r
        assert int(r["repeats"]) == 2, r
    for r in rows:
        if r["impl"] == "naive":
            n, c, _, _ = map(int, r["shape"].split("x"))
            mn, mc, _, _ = map(int, r["measured_shape"].split("x"))
            assert math.isclose(float(r["scale"]), n * c / (mn * mc))
        elif r["impl"] != "memory-limit":
            assert float(r["scale"]) == 1.0 and r["measured_shape"] == r["shape"]


def test_memory_limit_is_the_copy_scaled_by_the_bytes_moved(quick_run):
    rows = _read(quick_run / "times.csv")
    copy = {(r["dtype"], r["config"]): r for r in rows if r["impl"] == "copy"}
    for r in rows:
        if r["impl"] != "memory-limit":
            continue
        # the input (2, 4, 16, 16) pools to 8x8 with both configurations: the output is a quarter of the input
        # (in units of x's bytes); max pooling's forward+backward also writes and reads int64 indices
        x, out = 1.0, 0.25
        index = out * 8 / {"float32": 4, "float64": 8}[r["dtype"]]
        moved = x + out if r["pass"] == "forward" else (2 * x + 2 * out + (2 * index if r["op"] == "max" else 0))
        # rows are medians of their own rounds, so compare with the factor, not the copy row's time
        assert math.isclose(float(r["scale"]), moved / 2), r
        assert (r["dtype"], r["config"]) in copy


def test_each_thread_count_has_the_memory_limit_of_its_own_copy(monkeypatch):
    """The memory-limit row of a thread count is scaled from the copy timed on that many threads: here the copy on
    two threads is made to take at least 50 ms and the copy on one thread nothing, so a two-thread row scaled from
    the one-thread copy (or a one-thread row from the two-thread copy) would be off by orders of magnitude."""
    slow_s = 0.05

    def fake_copy(x, n_threads, cython_tier):
        return (lambda: time.sleep(slow_s)) if n_threads == 2 else (lambda: None)
    monkeypatch.setattr(bench, "_threaded_copy", fake_copy)
    rows = bench.run(shape=(1, 2, 8, 8), threads=(1, 2), repeats=1, ops=("max",), passes=("forward",),
                     dtypes=("float64",), configs=("k2 s2",), impls=("numpy", "copy"), progress=False, flush_mb=0)
    limits = {r["threads"]: r for r in rows if r["impl"] == "memory-limit"}
    assert set(limits) == {1, 2}
    for thr, r in limits.items():
        assert r["threads"] == thr and r["scale"] == limits[1]["scale"]
    factor = limits[2]["scale"]   # 8x8 -> 4x4, forward: (x + out) / (2 x) = (1 + 1/4) / 2
    assert math.isclose(factor, 0.625)
    assert limits[2]["time_ms"] >= slow_s * 1e3 * factor
    assert limits[1]["time_ms"] < 0.1 * slow_s * 1e3 * factor
    # the table shows each thread count's own limit, and the 1-thread goal uses the 1-thread limit
    lines = {line.split()[5]: line for line in bench.format_table(rows).splitlines()   # "k2 s2" is two words
             if line.startswith("float64")}
    assert lines["2"].split()[-2] == f"{limits[2]['time_ms']:.3f}"
    assert lines["1"].split()[-2] == f"{limits[1]['time_ms']:.3f}"


def test_the_memory_limit_is_not_borrowed_from_another_thread_count():
    """Where the copy was not timed on two threads (no compiled tier), a two-thread line shows no limit."""
    rows = [{"impl": "memory-limit", "op": "max", "pass": "forward", "dtype": "float32", "config": "k2 s2",
             "threads": 1, "time_ms": 1.0},
            {"impl": "numpy", "op": "max", "pass": "forward", "dtype": "float32", "config": "k2 s2",
             "threads": 1, "time_ms": 3.0},
            {"impl": "torch", "op": "max", "pass": "forward", "dtype": "float32", "config": "k2 s2",
             "threads": 2, "time_ms": 2.0}]
    lines = [line for line in bench.format_table(rows).splitlines() if line.startswith("float32")]
    assert [line.split()[5] for line in lines] == ["1", "2"]                     # "k2 s2" is two words
    assert lines[0].split()[-2] == "1.000" and lines[1].split()[-1] == "-"
    assert lines[1].split()[6:10] == ["3.000", "ms", "2.000", "ms"]   # numpy (one thread, stands for both), torch


def test_ratio_table_names_every_goal_and_its_result(quick_run):
    ratios = _read(quick_run / "ratios.csv")
    names = {r["name"] for r in ratios}
    assert names == {goal[0] for goal in bench.GOALS}
    times = {(r["impl"], r["op"], r["pass"], r["dtype"], r["config"], r["threads"]): float(r["time_ms"])
             for r in _read(quick_run / "times.csv")}
    for r in ratios:
        if r["value"] == "":  # not timed: the quick run uses one thread, so the 2-thread ratios are n/a
            assert r["passed"] == "" and "thread" in r["name"]
            continue
        value = float(r["value"])
        assert value > 0 and r["passed"] in ("True", "False")
        goal = next(g for g in bench.GOALS if g[0] == r["name"])
        _, num, den, op, pass_, (t_num, t_den), _, test = goal
        expected = times[(num, op, pass_, r["dtype"], r["config"], str(t_num))] / \
            times[(den, op, pass_, r["dtype"], r["config"], str(t_den))]
        assert math.isclose(value, expected, rel_tol=1e-9)
        assert (r["passed"] == "True") == test(value)


def test_run_api_returns_rows_and_plot_returns_a_figure():
    rows = bench.run(shape=(1, 2, 8, 8), repeats=1, ops=("max",), passes=("forward",), dtypes=("float64",),
                     configs=("k2 s2",), impls=("naive", "numpy", "copy"), progress=False)
    assert {r["impl"] for r in rows} == {"naive", "numpy", "copy", "memory-limit"}
    assert all(r["time_ms"] > 0 for r in rows)
    fig = bench.plot(rows)
    assert fig.axes and fig.axes[0].get_title().startswith("max pooling, forward")


def test_importing_pooling_lib_does_not_import_torch_or_matplotlib():
    import subprocess

    code = ("import sys, pooling_lib, pooling_lib.bench; "
            "print(any(m == 'torch' or m.startswith('matplotlib') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_timed_call_starts_after_a_cache_sweep(monkeypatch):
    sweeps = []
    monkeypatch.setattr(bench, "_evict", lambda sweep: sweeps.append(None if sweep is None else sweep.nbytes))
    bench.run(shape=(1, 2, 8, 8), repeats=3, ops=("max",), passes=("forward",), dtypes=("float64",),
              configs=("k2 s2",), impls=("numpy", "copy"), progress=False, flush_mb=1)
    assert sweeps == [2**20] * (3 * 2)   # 3 rounds of 2 implementations, 1 MiB each
    sweeps.clear()
    bench.run(shape=(1, 2, 8, 8), repeats=2, ops=("max",), passes=("forward",), dtypes=("float64",),
              configs=("k2 s2",), impls=("numpy",), progress=False, flush_mb=0)
    assert sweeps == [None, None]


def test_negative_flush_size_is_refused():
    with pytest.raises(ValueError, match="flush_mb must be >= 0"):
        bench.run(shape=(1, 2, 8, 8), repeats=1, impls=("numpy",), progress=False, flush_mb=-1)


def test_main_reruns_itself_with_a_short_openmp_spin(monkeypatch, tmp_path):
    """Multi-thread timings need to know how idle OpenMP threads wait (``bench._WAIT_POLICY_NOTE``): ``main()``
    re-runs itself with ``SPIN_ENV`` when none of the variables is set, and leaves a user's own choice alone."""
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    for key in bench._SPIN_KEYS:
        monkeypatch.delenv(key, raising=False)
    argv = ["--quick", "--threads", "1", "2", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    assert len(calls) == 1
    cmd, env = calls[0]
    assert cmd[1:] == ["-m", "pooling_lib.bench", *argv]
    assert {k: env[k] for k in bench.SPIN_ENV} == bench.SPIN_ENV

    class Ran(Exception):
        pass

    def run(**kwargs):
        raise Ran(kwargs["threads"])

    monkeypatch.setattr(bench, "run", run)
    for key in bench._SPIN_KEYS:
        monkeypatch.setenv(key, "PASSIVE" if key == "OMP_WAIT_POLICY" else "1")
        with pytest.raises(Ran):            # runs here, with the user's setting: no second process
            bench.main(argv)
        monkeypatch.delenv(key)
    assert len(calls) == 1
    with pytest.raises(Ran):                # one thread: nothing to wait for, no second process
        bench.main(["--quick", "--out", str(tmp_path)])
    assert len(calls) == 1


def test_max_forward_backward_is_pytorchs_recipe(monkeypatch):
    """The timed max-pooling forward+backward hands the backward the forward's indices (as PyTorch's autograd
    does); average pooling's backward takes none."""
    import numpy as np

    seen = []
    backward = functional.max_pool2d_backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("indices"))
        return backward(*args, **kwargs)
    monkeypatch.setattr(bench.F, "max_pool2d_backward", spy)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1}
    g = np.ones((2, 3, 4, 4))
    bench._ours(x, g, "max", "forward+backward", kwargs, "numpy")()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], functional.max_pool2d(x, **kwargs, return_indices=True)[1])


def test_without_matplotlib_the_run_says_so_first_and_writes_no_plot(monkeypatch, tmp_path, capsys):
    import importlib.util
    import subprocess

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("bench: matplotlib is not installed, so there will be no times.png")  # before the run
    assert (tmp_path / "times.csv").exists() and not (tmp_path / "times.png").exists()
    calls = []  # the re-run with a short OpenMP spin is told, so that it says nothing a second time
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append(cmd) or 0)
    for key in bench._SPIN_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert bench.main(["--quick", "--threads", "1", "2", "--out", str(tmp_path)]) == 0
    assert calls[0][-1] == "--no-plot"
