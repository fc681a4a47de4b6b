"""The benchmark: ``python -m pooling_lib.bench`` (``make bench``), and the API chapter 9 uses.

It times max and average pooling, forward and forward+backward, float32 and float64, for two configurations
("k2 s2": 2x2 windows at stride 2; "k3 s2 p1": 3x3 windows at stride 2 with padding 1), on an input of shape
``(N, C, H, W) = (32, 64, 56, 56)`` by default, with these implementations:

``naive``
    the naive tier, on a smaller batch of the same planes (``(1, 2, H, W)``), its time scaled by the number of
    planes (every plane costs the same);
``numpy``, ``cython``
    the NumPy and Cython tiers on NCHW input;
``cython-nhwc``
    the Cython tier on NHWC input (``layout="NHWC"``, a C-contiguous ``(N, H, W, C)`` array);
``torch``, ``torch-channels_last``
    ``torch.nn.functional`` on the CPU, NCHW and ``channels_last`` (only when PyTorch is installed);
``copy``
    a copy of ``x`` into a new array: the memory-bandwidth reference. With the compiled tier it is a ``memcpy``
    into an array allocated as the tier allocates its outputs (so from the same cache of freed buffers, see
    :mod:`pooling_lib.cython_tier`), in slabs on the kernels' own OpenMP threads, timed on every thread count,
    which shows how far memory bandwidth itself grows with threads: a memory-bound kernel cannot gain more from
    threads than this copy does. (Without the compiled tier: ``x.copy()``, one thread.)

"forward+backward" is what PyTorch's autograd runs, against PyTorch's forward on a tensor that requires a
gradient followed by ``.backward(grad_out)``: for max pooling ``max_pool2d(x, ..., return_indices=True)`` then
``max_pool2d_backward(grad_out, x, ..., indices=indices)`` (the backward reads the winners' indices, as PyTorch's
does, instead of finding the winners in ``x`` again), for average pooling ``avg_pool2d`` then
``avg_pool2d_backward``. Every time is the median over ``repeats`` interleaved rounds (each
round calls every implementation once, so a busy machine slows them all alike). Before every timed call the
benchmark reads a buffer of ``flush_mb`` MiB (default ``FLUSH_MB``, 128), larger than the CPU's caches, twice
over in chunks (see ``_evict``), so that every call starts with its input in main memory. Without it, each
implementation would start from whatever the call before it in the round left in the last-level cache: on the
machine of the README the NCHW kernel, timed right after another call had read the same float32 input, took
1.4 ms for its 2x2 forward, and 2.1 ms after a call that had read 192 MiB of other data. The Cython tier and
PyTorch run on each thread count asked for; the others are single-threaded. A derived row ``memory-limit`` is the
copy time scaled to the bytes the pooling pass must read and write (``x`` and the output forward; for the backward
also ``grad_out`` and ``grad_x``, and for max pooling the int64 indices, written and read), one row per thread
count, each scaled from the copy timed on that thread count: no implementation on as many threads can beat it by
much. (Without the compiled tier the copy, and so the limit, is timed on one thread only.) The goal
``cython/memory-limit`` compares the two on one thread.

API
---
``run(shape=(32, 64, 56, 56), threads=(1,), repeats=7, ops=("max", "avg"), passes=("forward", "forward+backward"),
dtypes=("float32", "float64"), configs=("k2 s2", "k3 s2 p1"), impls=IMPLS, progress=True, flush_mb=FLUSH_MB)``
    Time everything; returns a list of dicts, one per measurement, with the keys ``impl, layout, op, pass,
    dtype, config, threads, shape, time_ms`` (the median; for ``naive`` already scaled to ``shape``),
    ``min_ms, repeats, measured_shape, scale``. ``configs`` may also be a dict ``{name: {"kernel_size": ...,
    "stride": ..., "padding": ...}}``. On a small shape, e.g. ``run(shape=(8, 16, 56, 56),
    dtypes=("float32",))``, it takes about 9 s (on the 2-core machine of the README, most of it emptying the
    caches; the full default run of ``main()``, both dtypes and 1 and 2 threads, took about 50 s there).
``ratios(rows)``
    The project's speed goals as named ratios, for every dtype and configuration timed: a list of dicts
    ``name, dtype, config, value, goal, passed`` (``passed`` is None when an operand was not timed).
``format_table(rows)``, ``format_ratios(ratio_rows)``
    Plain-text tables (a ratio whose goal is ``info`` is a reference, not a goal). ``describe()``: one line on
    the build of the kernels (``avx2`` or ``baseline``) and the NumPy and PyTorch versions.
``write_csv(rows, path)``
    Write any list of dict rows (times or ratios) as CSV.
``plot(rows, path=None)``
    A matplotlib Figure of the times (one panel per operation and pass, bars per implementation, log scale);
    saved as PNG when ``path`` is given. It uses no pyplot state, so it works the same in a notebook.
``main(argv=None)``
    The command: ``--shape N C H W``, ``--threads 1 2``, ``--repeats``, ``--flush-mb``, ``--quick`` (a tiny
    shape and two rounds, for smoke tests), ``--out DIR`` (default ``bench-results/``: ``times.csv``,
    ``ratios.csv``, ``times.png``), ``--dtypes``, ``--ops``, ``--passes``, ``--impls``, ``--no-plot``. Progress
    goes to stderr.

Threads: after a parallel loop, an OpenMP runtime keeps its idle threads spinning for a while, then puts them to
sleep, and waking a sleeping thread costs every parallel loop that needs it again. Two runtimes share this process
(the Cython tier's and PyTorch's own copy), and a thread of one that spins while the other times a call takes a core
from it. ``main()`` therefore runs the benchmark with a short spin (``SPIN_ENV``; see ``_WAIT_POLICY_NOTE``) when
it times more than one thread, unless ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is set already;
``run()`` sets it before it imports PyTorch, but the Cython tier's runtime has read its settings already when
``pooling_lib`` was imported, so a notebook gets the runtime's default spin for the Cython tier.

PyTorch and matplotlib are imported inside these functions only, never when ``pooling_lib`` is imported.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time

import numpy as np

from . import functional as F

__all__ = ["CONFIGS", "IMPLS", "GOALS", "run", "ratios", "format_table", "format_ratios", "write_csv", "plot",
           "main"]

CONFIGS = {
    "k2 s2": {"kernel_size": 2, "stride": 2, "padding": 0},
    "k3 s2 p1": {"kernel_size": 3, "stride": 2, "padding": 1},
}
IMPLS = ("naive", "numpy", "cython", "cython-nhwc", "torch", "torch-channels_last", "copy")
_LAYOUT = {"cython-nhwc": "NHWC", "torch-channels_last": "NHWC"}
FLUSH_MB = 128  # MiB read (twice, in chunks) before every timed call; see _evict
NAIVE_PLANES = 2  # the naive tier runs on (1, NAIVE_PLANES, H, W) and is scaled to the full batch

# (name, numerator impl, denominator impl, op, pass, threads (num, den), goal text, test)
GOALS = [
    ("cython/torch, max NCHW forward", "cython", "torch", "max", "forward", (1, 1), "<= 0.2", lambda v: v <= 0.2),
    ("cython/torch, max NCHW forward+backward", "cython", "torch", "max", "forward+backward", (1, 1), "<= 0.2",
     lambda v: v <= 0.2),
    ("cython-nhwc/torch-channels_last, max forward", "cython-nhwc", "torch-channels_last", "max", "forward", (1, 1),
     "<= 1.0", lambda v: v <= 1.0),
    ("cython-nhwc/torch-channels_last, max forward+backward", "cython-nhwc", "torch-channels_last", "max",
     "forward+backward", (1, 1), "<= 1.0", lambda v: v <= 1.0),
    ("cython/memory-limit, max forward", "cython", "memory-limit", "max", "forward", (1, 1), "<= 3",
     lambda v: v <= 3.0),
    ("numpy/torch, max NCHW forward", "numpy", "torch", "max", "forward", (1, 1), "< 1", lambda v: v < 1.0),
    ("naive/cython, max forward (speed-up)", "naive", "cython", "max", "forward", (1, 1), ">= 500",
     lambda v: v >= 500),
    ("naive/cython, max forward+backward (speed-up)", "naive", "cython", "max", "forward+backward", (1, 1),
     ">= 500", lambda v: v >= 500),
    ("naive/cython, avg forward (speed-up)", "naive", "cython", "avg", "forward", (1, 1), ">= 500",
     lambda v: v >= 500),
    ("naive/cython, avg forward+backward (speed-up)", "naive", "cython", "avg", "forward+backward", (1, 1),
     ">= 500", lambda v: v >= 500),
    ("cython 1 thread/2 threads, max forward (speed-up)", "cython", "cython", "max", "forward", (1, 2), ">= 1.6",
     lambda v: v >= 1.6),
    ("cython 1 thread/2 threads, max forward+backward (speed-up)", "cython", "cython", "max", "forward+backward",
     (1, 2), ">= 1.6", lambda v: v >= 1.6),
    ("cython 1 thread/2 threads, avg forward (speed-up)", "cython", "cython", "avg", "forward", (1, 2), ">= 1.6",
     lambda v: v >= 1.6),
    ("cython 1 thread/2 threads, avg forward+backward (speed-up)", "cython", "cython", "avg", "forward+backward",
     (1, 2), ">= 1.6", lambda v: v >= 1.6),
    ("cython/torch, avg NCHW forward", "cython", "torch", "avg", "forward", (1, 1), "<= 0.5", lambda v: v <= 0.5),
    ("cython/torch, avg NCHW forward+backward", "cython", "torch", "avg", "forward+backward", (1, 1), "<= 0.5",
     lambda v: v <= 0.5),
    # not a goal: the ceiling that memory bandwidth sets on the thread speed-ups above
    ("copy 1 thread/2 threads (speed-up; the memory ceiling)", "copy", "copy", "copy", "copy", (1, 2), "info",
     None),
]


def _say(progress, message):
    if progress:
        print(message, file=sys.stderr, flush=True)


def _import_torch():
    if "torch" not in sys.modules:
        # PyTorch's OpenMP runtime reads these when it loads: see _WAIT_POLICY_NOTE
        if not _spin_chosen(os.environ):
            os.environ.update(SPIN_ENV)
    try:
        import torch
    except ImportError:
        return None
    return torch


# How long an idle OpenMP thread spins before it sleeps: GNU libgomp counts spins, LLVM's runtime milliseconds.
SPIN_ENV = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
_SPIN_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

_WAIT_POLICY_NOTE = (
    "After a parallel loop an OpenMP runtime keeps its idle threads spinning, then puts them to sleep (GNU libgomp's "
    "default spin lasted about 3.5 ms on the README's machine); waking a sleeping thread took 0.1-0.2 ms there, "
    "paid by every parallel loop that finds it asleep. Every timed call comes after the cache sweep (about 17 ms "
    "there), so the threads of the call before it, in either runtime (the Cython tier's or PyTorch's own copy), "
    "have stopped spinning by the time it starts. The benchmark asks for a short spin, GOMP_SPINCOUNT=10000 and "
    "KMP_BLOCKTIME=1 (about 0.3 ms there): long enough for one call's threads to stay awake from one of its parallel "
    "loops to the next, as in a training loop, and far too short to reach into the next timed call. Each runtime "
    "reads these variables once, when it loads; so main() re-runs the benchmark in a fresh process with them set "
    "(unless OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME is set already), and run() sets them before "
    "importing PyTorch."
)


def _spin_chosen(env):
    """True when ``env`` already says how idle OpenMP threads wait."""
    return any(key in env for key in _SPIN_KEYS)


def _configs(configs):
    if isinstance(configs, dict):
        return dict(configs)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; known: {list(CONFIGS)} (or pass a dict of keyword arguments)")
    return {c: CONFIGS[c] for c in configs}


def _pool_functions(op):
    if op == "max":
        return F.max_pool2d, F.max_pool2d_backward
    if op == "avg":
        return F.avg_pool2d, F.avg_pool2d_backward
    raise ValueError(f"op must be 'max' or 'avg', got {op!r}")


def _ours(x, grad_out, op, pass_, kwargs, backend, layout="NCHW"):
    """A no-argument callable that runs one of our tiers the way a user would. Max pooling's forward+backward
    is PyTorch's: the forward returns the indices, and the backward reads them."""
    forward, backward = _pool_functions(op)
    if pass_ == "forward":
        return lambda: forward(x, **kwargs, layout=layout, backend=backend)
    if pass_ == "forward+backward" and op == "max":
        def both():
            _, indices = forward(x, **kwargs, return_indices=True, layout=layout, backend=backend)
            backward(grad_out, x, **kwargs, layout=layout, backend=backend, indices=indices)
        return both
    if pass_ == "forward+backward":
        def both():
            forward(x, **kwargs, layout=layout, backend=backend)
            backward(grad_out, x, **kwargs, layout=layout, backend=backend)
        return both
    raise ValueError(f"pass must be 'forward' or 'forward+backward', got {pass_!r}")


def _theirs(torch, x, op, pass_, kwargs, channels_last):
    """A no-argument callable that runs torch.nn.functional on the CPU, forward or forward then .backward()."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    pool = torch.nn.functional.max_pool2d if op == "max" else torch.nn.functional.avg_pool2d
    args = (kwargs["kernel_size"], kwargs["stride"], kwargs["padding"])
    if pass_ == "forward":
        def forward():
            with torch.no_grad():
                pool(xt, *args)
        return forward
    grad_out = torch.ones_like(pool(xt, *args))

    def both():
        leaf = xt.detach().requires_grad_(True)
        pool(leaf, *args).backward(grad_out)
    return both


def _threaded_copy(x, n_threads, cython_tier):
    """A no-argument callable that copies x into a new array: with the compiled tier, in ``n_threads`` slabs at
    once on the kernels' OpenMP threads; without it, ``x.copy`` (one thread only, else None)."""
    if cython_tier is None:
        return x.copy if n_threads == 1 else None
    flat = x.reshape(-1)

    def call():
        out = cython_tier._empty(flat.shape, flat.dtype)
        cython_tier._kernels.parallel_copy(flat, out, n_threads)
        return out
    return call


_EVICT_CHUNK = 8 * 2**20  # bytes: more than a core's own (L2) cache, so the second read of a chunk is served by the
# shared last-level cache


def _evict(sweep):
    """Read ``sweep`` (a buffer larger than the caches, or None for no eviction), so that the next call finds
    its input in main memory and not in a cache warmed by whatever ran before it.

    Each chunk is read twice in a row. A last-level cache that resists streaming keeps a line read twice ahead
    of lines read once, and one plain pass over 128 MiB left behind the lines a call had read twice (a NaN scan,
    then the windows): on the README's machine the float64 3x3 max forward took 4.0-4.4 ms after such a call
    and one pass, against 5.8 ms when nothing had read its input; with each chunk read twice, 5.8 ms both
    ways."""
    if sweep is None:
        return
    step = _EVICT_CHUNK // sweep.itemsize
    for start in range(0, sweep.size, step):
        chunk = sweep[start:start + step]
        chunk.sum()
        chunk.sum()


def _bytes_moved(op, pass_, x_bytes, out_bytes, index_bytes=0):
    """Bytes a pooling pass must read and write, at the least. ``index_bytes``: the size of max pooling's indices,
    which its forward+backward writes and then reads (as ``_ours`` and PyTorch run it)."""
    forward = x_bytes + out_bytes  # read x, write out
    if pass_ == "forward":
        return forward
    backward = out_bytes + x_bytes  # read grad_out, write grad_x
    if op == "max":
        backward += 2 * index_bytes  # the forward writes the indices, the backward reads them
    return forward + backward


def run(shape=(32, 64, 56, 56), threads=(1,), repeats=7, ops=("max", "avg"), passes=("forward", "forward+backward"),
        dtypes=("float32", "float64"), configs=tuple(CONFIGS), impls=IMPLS, progress=True, flush_mb=FLUSH_MB):
    """Time every implementation; see the module docstring. Returns a list of dict rows."""
    shape = tuple(int(s) for s in shape)
    N, C, H, W = shape
    threads = tuple(int(t) for t in threads)
    repeats = max(1, int(repeats))
    flush_mb = int(flush_mb)
    if flush_mb < 0:
        raise ValueError(f"flush_mb must be >= 0 (MiB read before each timed call; 0: none), got {flush_mb}")
    sweep = np.ones(flush_mb * 2**20 // 8) if flush_mb > 0 else None
    impls = tuple(impls)
    configs = _configs(configs)
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown impls {unknown}; known: {IMPLS}")
    torch = _import_torch() if any(i.startswith("torch") for i in impls) else None
    if torch is None:
        impls = tuple(i for i in impls if not i.startswith("torch"))
    if "cython" not in F.available_backends():
        impls = tuple(i for i in impls if not i.startswith("cython"))
        _say(progress, "bench: the Cython tier is not built; timing the others")
    cython_tier = F.cython_tier if "cython" in F.available_backends() else None
    if max(threads) > 1 and not _spin_chosen(os.environ):
        _say(progress, "bench: note: the Cython tier's OpenMP threads spin for the runtime's default time after "
                       "each call. " + _WAIT_POLICY_NOTE)
    saved_cython_threads = cython_tier.get_num_threads() if cython_tier is not None else None
    saved_torch_threads = torch.get_num_threads() if torch is not None else None
    rng = np.random.default_rng(0)
    base = rng.standard_normal(shape)
    naive_shape = (1, min(C, NAIVE_PLANES), H, W)
    rows = []
    groups = [(dt, cfg, op, ps) for dt in dtypes for cfg in configs for op in ops for ps in passes]
    started = time.perf_counter()
    try:
        for g_index, (dtype, cfg, op, pass_) in enumerate(groups, 1):
            kwargs = configs[cfg]
            x = base.astype(dtype)
            x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            x_small = np.ascontiguousarray(x[:1, : naive_shape[1]])
            forward, _ = _pool_functions(op)
            out_shape = forward(x[:1, :1], **kwargs, backend="numpy").shape[2:]
            grad_out = np.ones((N, C) + out_shape, dtype=dtype)
            grad_nhwc = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1))
            grad_small = np.ones(naive_shape[:2] + out_shape, dtype=dtype)
            for t_index, n_threads in enumerate(threads):
                calls = {}
                for impl in impls:
                    single = impl in ("naive", "numpy")
                    if single and t_index > 0:
                        continue  # single-threaded: timed once
                    if impl == "naive":
                        calls[impl] = _ours(x_small, grad_small, op, pass_, kwargs, "naive")
                    elif impl == "numpy":
                        calls[impl] = _ours(x, grad_out, op, pass_, kwargs, "numpy")
                    elif impl == "cython":
                        calls[impl] = _ours(x, grad_out, op, pass_, kwargs, "cython")
                    elif impl == "cython-nhwc":
                        calls[impl] = _ours(x_nhwc, grad_nhwc, op, pass_, kwargs, "cython", layout="NHWC")
                    elif impl == "torch":
                        calls[impl] = _theirs(torch, x, op, pass_, kwargs, channels_last=False)
                    elif impl == "torch-channels_last":
                        calls[impl] = _theirs(torch, x, op, pass_, kwargs, channels_last=True)
                    elif impl == "copy":
                        call = _threaded_copy(x, n_threads, cython_tier)
                        if call is not None:
                            calls[impl] = call
                if cython_tier is not None:
                    cython_tier.set_num_threads(n_threads)
                if torch is not None:
                    torch.set_num_threads(n_threads)
                times = {impl: [] for impl in calls}
                for impl, call in calls.items():  # warm-up (first-touch allocations, lazy imports)
                    if impl != "naive":
                        call()
                for _ in range(repeats):
                    for impl, call in calls.items():
                        _evict(sweep)
                        t0 = time.perf_counter()
                        call()
                        times[impl].append(time.perf_counter() - t0)
                for impl, ts in times.items():
                    measured = naive_shape if impl == "naive" else shape
                    scale = (N * C) / (measured[0] * measured[1]) if impl == "naive" else 1.0
                    median_ms = statistics.median(ts) * 1e3 * scale
                    rows.append({
                        "impl": impl, "layout": _LAYOUT.get(impl, "NCHW"), "op": op if impl != "copy" else "copy",
                        "pass": pass_ if impl != "copy" else "copy", "dtype": dtype, "config": cfg,
                        "threads": 1 if impl in ("naive", "numpy") else n_threads,
                        "shape": "x".join(map(str, shape)), "time_ms": median_ms, "min_ms": min(ts) * 1e3 * scale,
                        "repeats": len(ts), "measured_shape": "x".join(map(str, measured)), "scale": scale,
                        "_group": (op, pass_),
                    })
                    if impl == "copy":  # the limit for this thread count: the copy on as many threads
                        outputs = int(np.prod((N, C) + out_shape))
                        moved = _bytes_moved(op, pass_, x.nbytes, outputs * x.itemsize, outputs * 8)
                        factor = moved / (2 * x.nbytes)  # the copy reads and writes x once each
                        rows.append({
                            "impl": "memory-limit", "layout": "NCHW", "op": op, "pass": pass_, "dtype": dtype,
                            "config": cfg, "threads": n_threads, "shape": "x".join(map(str, shape)),
                            "time_ms": median_ms * factor, "min_ms": min(ts) * 1e3 * factor, "repeats": len(ts),
                            "measured_shape": "x".join(map(str, shape)), "scale": factor, "_group": (op, pass_),
                        })
                _say(progress, f"bench [{g_index}/{len(groups)}] {dtype} {cfg} {op} {pass_}, {n_threads} thread(s): "
                               + ", ".join(f"{i} {statistics.median(t) * 1e3:.2f} ms"
                                           + (f" (on {NAIVE_PLANES} planes)" if i == "naive" else "")
                                           for i, t in times.items())
                               + f"  ({time.perf_counter() - started:.0f} s)")
    finally:
        if cython_tier is not None:
            cython_tier.set_num_threads(saved_cython_threads)
        if torch is not None:
            torch.set_num_threads(saved_torch_threads)
    # the copy is measured once per group; keep one copy row per (dtype, config, threads)
    kept, seen = [], set()
    for row in rows:
        if row["impl"] == "copy":
            key = (row["dtype"], row["config"], row["threads"])
            if key in seen:
                continue
            seen.add(key)
        row.pop("_group")
        kept.append(row)
    return kept


def _lookup(rows):
    table = {}
    for row in rows:
        table[(row["impl"], row["op"], row["pass"], row["dtype"], row["config"], row["threads"])] = row["time_ms"]
    return table


def ratios(rows):
    """The speed goals as named ratios, for every dtype and configuration in ``rows`` (see the module docstring)."""
    table = _lookup(rows)
    combos = []
    for row in rows:
        key = (row["dtype"], row["config"])
        if key not in combos:
            combos.append(key)
    out = []
    for dtype, config in combos:
        for name, num, den, op, pass_, (t_num, t_den), goal, test in GOALS:
            a = table.get((num, op, pass_, dtype, config, t_num))
            b = table.get((den, op, pass_, dtype, config, t_den))
            if a is None or b is None:  # not timed (no PyTorch, one thread count only, ...)
                value, passed = None, None
            else:  # time / time: a fraction for "<=" goals, a speed-up (slow / fast) for ">=" goals
                value = a / b
                passed = bool(test(value)) if test is not None else None
            out.append({"name": name, "dtype": dtype, "config": config, "value": value, "goal": goal,
                        "passed": passed})
    return out


def format_table(rows):
    """Times as a plain-text table: one line per (dtype, config, op, pass, threads), one column per impl. The
    single-threaded ``naive`` and ``numpy`` show their one time on every line; ``memory-limit`` shows the limit for
    the line's thread count (``-`` where the copy was not timed on that many threads)."""
    impls = [i for i in IMPLS + ("memory-limit",) if any(r["impl"] == i for r in rows)]
    impls = [i for i in impls if i != "copy"]
    keys = []
    for r in rows:
        if r["impl"] in ("copy",):
            continue
        k = (r["dtype"], r["config"], r["op"], r["pass"], r["threads"])
        if k not in keys:
            keys.append(k)
    table = _lookup(rows)
    head = f"{'dtype':8} {'config':9} {'op':3} {'pass':16} {'thr':>3} " + " ".join(f"{i:>20}" for i in impls)
    lines = [head, "-" * len(head)]
    for dtype, config, op, pass_, thr in keys:
        cells = []
        for impl in impls:
            t = table.get((impl, op, pass_, dtype, config, thr))
            if t is None and impl in ("naive", "numpy"):  # single-threaded: timed once, on one thread
                t = table.get((impl, op, pass_, dtype, config, 1))
            cells.append(f"{t:17.3f} ms" if t is not None else f"{'-':>20}")
        lines.append(f"{dtype:8} {config:9} {op:3} {pass_:16} {thr:>3} " + " ".join(cells))
    copies = [r for r in rows if r["impl"] == "copy"]
    for r in copies:
        lines.append(f"copy of x ({r['dtype']}, {r['shape']}, {r['threads']} thread(s)): {r['time_ms']:.3f} ms")
    return "\n".join(lines)


def format_ratios(ratio_rows):
    """Ratios as a plain-text table with PASS/MISS."""
    lines = [f"{'ratio':60} {'dtype':8} {'config':9} {'value':>10} {'goal':>8}  result", "-" * 108]
    for r in ratio_rows:
        value = f"{r['value']:10.3f}" if r["value"] is not None else f"{'-':>10}"
        result = "info" if r["goal"] == "info" else {True: "PASS", False: "MISS", None: "n/a"}[r["passed"]]
        lines.append(f"{r['name']:60} {r['dtype']:8} {r['config']:9} {value} {r['goal']:>8}  {result}")
    return "\n".join(lines)


def write_csv(rows, path):
    """Write dict rows (times or ratios) to ``path`` as CSV, columns in the order of the first row."""
    rows = list(rows)
    fields = list(rows[0]) if rows else []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(rows, path=None):
    """Bar charts of the median times (log scale), one panel per (op, pass), grouped by config, for the first
    dtype in ``rows`` and the smallest thread count. Returns the matplotlib Figure; saves a PNG at ``path``."""
    from matplotlib.figure import Figure

    dtype = rows[0]["dtype"]
    threads = min(r["threads"] for r in rows)
    panels = []
    for r in rows:
        k = (r["op"], r["pass"])
        if r["impl"] != "copy" and k not in panels:
            panels.append(k)
    configs = []
    for r in rows:
        if r["config"] not in configs:
            configs.append(r["config"])
    impls = [i for i in IMPLS + ("memory-limit",) if i != "copy" and any(r["impl"] == i for r in rows)]
    table = _lookup(rows)
    cols = 2
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.5 * cols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, (op, pass_) in zip(axes.flat, panels):
        for k, impl in enumerate(impls):
            heights = [table.get((impl, op, pass_, dtype, c, 1 if impl in ("naive", "numpy") else threads),
                                 np.nan) for c in configs]
            ax.bar(np.arange(len(configs)) + (k - (len(impls) - 1) / 2) * width, heights, width, label=impl)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(configs)), configs)
        ax.set_ylabel("median time (ms, log scale)")
        ax.set_xlabel("configuration")
        ax.set_title(f"{op} pooling, {pass_} ({dtype}, {threads} thread{'s' if threads > 1 else ''})")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"pooling_lib benchmark, input {rows[0]['shape']} (NCHW)")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def describe():
    """One line on what was measured with: the kernels' build, thread support, NumPy and PyTorch versions."""
    parts = [f"numpy {np.__version__}"]
    if "cython" in F.available_backends():
        tier = F.cython_tier
        parts.append(f"pooling_lib kernels: {tier.simd()} build, "
                     + ("OpenMP" if tier.openmp_enabled() else "no OpenMP"))
    else:
        parts.append("pooling_lib kernels: not built")
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.__version__}")
    return "; ".join(parts)


def main(argv=None):
    """The ``python -m pooling_lib.bench`` command; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m pooling_lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=4, type=int, metavar=("N", "C", "H", "W"), default=None,
                        help="input shape (default 32 64 56 56; 2 4 16 16 with --quick)")
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="thread counts for the Cython tier and PyTorch (default: 1 2, or 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per measurement (default 7)")
    parser.add_argument("--flush-mb", type=int, default=FLUSH_MB,
                        help=f"MiB read (twice) before each timed call to empty the caches "
                             f"(default {FLUSH_MB}; 0: none)")
    parser.add_argument("--quick", action="store_true", help="tiny shape, two rounds: a smoke test")
    parser.add_argument("--out", default="bench-results", help="directory for times.csv, ratios.csv, times.png")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--ops", nargs="+", default=["max", "avg"], choices=["max", "avg"])
    parser.add_argument("--passes", nargs="+", default=["forward", "forward+backward"],
                        choices=["forward", "forward+backward"])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if not args.no_plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # said before the run, not after it
            print("bench: matplotlib is not installed, so there will be no times.png (pip install matplotlib, or "
                  "pooling_lib[bench]; --no-plot silences this)", file=sys.stderr)
            args.no_plot = True
    shape = args.shape or ((2, 4, 16, 16) if args.quick else (32, 64, 56, 56))
    threads = args.threads or ([1] if args.quick else [1, 2])
    if max(threads) > 1 and not _spin_chosen(os.environ):
        import subprocess

        print("bench: re-running with " + " ".join(f"{k}={v}" for k, v in SPIN_ENV.items())
              + " (see pooling_lib.bench._WAIT_POLICY_NOTE)", file=sys.stderr, flush=True)
        env = dict(os.environ, **SPIN_ENV)
        extra = ["--no-plot"] if args.no_plot else []  # already decided (and said) here
        return subprocess.call([sys.executable, "-m", "pooling_lib.bench", *argv, *extra], env=env)
    repeats = args.repeats or (2 if args.quick else 7)
    rows = run(shape=shape, threads=threads, repeats=repeats, ops=args.ops, passes=args.passes, dtypes=args.dtypes,
               impls=args.impls, progress=True, flush_mb=args.flush_mb)
    ratio_rows = ratios(rows)
    os.makedirs(args.out, exist_ok=True)
    write_csv(rows, os.path.join(args.out, "times.csv"))
    write_csv(ratio_rows, os.path.join(args.out, "ratios.csv"))
    print(describe())
    print(format_table(rows))
    print()
    print(format_ratios(ratio_rows))
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        plot(rows, os.path.join(args.out, "times.png"))
    print(f"\nwrote {os.path.join(args.out, 'times.csv')}, ratios.csv"
          + ("" if args.no_plot else ", times.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
