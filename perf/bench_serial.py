"""Serial benchmark: one training step and one forward pass of mgritnn against PyTorch, and a roofline.

For every shape and dtype this measures, side by side in one process (calls interleaved round by
round, see :func:`harness.timeit_many`):

* mgritnn training step: ``GRUClassifier.loss_and_grad_flat(X, y)`` then the ``adam`` update (``apply_updates``);
* mgritnn forward: ``GRUClassifier.forward(X)`` (logits);
* PyTorch training step: ``zero_grad``, ``nn.GRU(batch_first=True)`` + ``nn.Linear`` on the last
  step's top state, ``cross_entropy``, ``backward``, ``torch.optim.Adam.step`` (same weights, dtype
  and thread count);
* PyTorch forward: the same forward under ``torch.no_grad()``.

Each figure is the median of ``--repeats`` calls; the first call is timed apart (``compile_s`` is
first call minus median: numba compilation, or loading it from numba's on-disk cache, plus the
first-touch cost of the buffers). The roofline time is the GEMM FLOP count divided by the measured
large-GEMM rate of the BLAS that mgritnn's kernels call (:func:`harness.gemm_rate`), at the same
dtype and thread count.

FLOP count (GEMMs only; gate arithmetic, Adam and the loss are not counted)
----------------------------------------------------------------------------
With batch B, length T, input size I, hidden size H, L layers, C classes, and layer l's input size
I_0 = I, I_l = H for l > 0, each time step of layer l does two GEMMs in the forward pass,
``x W_x^T`` (2 B 3H I_l FLOPs) and ``h W_h^T`` (2 B 3H H FLOPs)::

    F_fwd  = T * sum_l 2 * B * 3H * (I_l + H)  +  2 * B * H * C        (head)
    F_step = 3 * F_fwd

The backward pass does, per forward GEMM, one GEMM for the input cotangent and one for the weight
gradient, each as large as the forward one: so a training step is 3x the forward. (The cotangent of
layer 0's input, ``dax0 W_x0``, is not needed because X needs no gradient, and neither mgritnn
nor PyTorch computes it; the formula counts it anyway, 2 T B 3H I of the total: 8% for hmdb51,
5% for long, 1% for uci_har, so the roofline step time is slightly generous.)

Examples
--------
``PYTHONPATH=. python perf/bench_serial.py --quick``
``PYTHONPATH=. python perf/bench_serial.py --shapes uci_har,long --out perf/results/serial.jsonl``
"""
import argparse
import datetime
import os
import statistics
import sys

import numpy as np

import mgritnn
from mgritnn.optim import adam, apply_updates

try:  # run as ``python perf/bench_serial.py`` (perf/ on sys.path) or as ``python -m perf.bench_serial``
    import harness
except ImportError:  # pragma: no cover
    from perf import harness

#: name -> (B, T, I, H, L): batch, sequence length, input size, hidden size, layers.
SHAPES = {
    "uci_har": (100, 128, 9, 100, 2),
    "hmdb51": (100, 128, 1000, 1000, 2),
    "long": (16, 4096, 6, 32, 1),
}
#: Number of classes of every shape.
NUM_CLASSES = 6
#: Shapes whose step takes seconds: at most this many repeats and no untimed warm-up call.
HEAVY = {"hmdb51": 3}


def flops(B, T, I, H, L, C=NUM_CLASSES):
    """GEMM FLOPs of a forward pass and of a training step (formula in the module docstring).

    Returns
    -------
    fwd, step : float
    """
    fwd = 0.0
    for l in range(L):
        I_l = I if l == 0 else H
        fwd += T * 2.0 * B * 3 * H * (I_l + H)
    fwd += 2.0 * B * H * C
    return fwd, 3.0 * fwd


def memory_estimate(B, T, I, H, L, itemsize):
    """Rough bytes an mgritnn training step holds at its peak.

    Per layer the forward keeps the trajectory hs (T+1, B, H), gates G (T, B, 3H), N (T, B, H) and
    the input projection (T, B, 3H); the adjoint of one layer adds dax, dah (T, B, 3H); plus X.
    """
    per_layer = (T + 1) * B * H + T * B * 3 * H + T * B * H + T * B * 3 * H
    return itemsize * (L * per_layer + 2 * T * B * 3 * H + 2 * T * B * I)


def make_data(B, T, I, dtype, seed=0):
    """Random inputs ``X`` (B, T, I) of ``dtype`` and labels ``y`` (B,) in 0..C-1."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, I)).astype(dtype)
    y = rng.integers(0, NUM_CLASSES, B)
    return X, y


def mgritnn_fns(model, X, y, lr=1e-3):
    """The mgritnn training step and forward pass as functions without arguments.

    Returns
    -------
    step, fwd : callable
        ``step()`` appends the loss of the batch (before the update) to ``step.losses``.
    """
    opt = adam(lr=lr)
    state = [opt.init(model.flat)]

    def step():
        loss, g, _ = model.loss_and_grad_flat(X, y)
        updates, state[0] = opt.update(g, state[0], model.flat)
        apply_updates(model.flat, updates, inplace=True)
        step.losses.append(loss)

    step.losses = []

    def fwd():
        return model.forward(X)

    return step, fwd


def torch_fns(model, X, y, lr=1e-3):
    """PyTorch's training step and forward pass with the same weights as the mgritnn ``model``.

    Builds ``nn.GRU(I, H, L, batch_first=True)`` and ``nn.Linear(H, C)`` in the model's dtype,
    copies the parameters (PyTorch names), and a ``torch.optim.Adam``.

    Returns
    -------
    step, fwd : callable
        ``step()`` appends the loss of the batch (before the update) to ``step.losses``.
    """
    import torch

    tdt = getattr(torch, np.dtype(model.dtype).name)
    gru = torch.nn.GRU(model.input_size, model.hidden_size, model.num_layers, batch_first=True)
    head = torch.nn.Linear(model.hidden_size, model.num_classes)
    gru.to(tdt)
    head.to(tdt)
    with torch.no_grad():
        for name, p in gru.named_parameters():
            p.copy_(torch.from_numpy(model.params[name].copy()))
        for name, p in head.named_parameters():
            p.copy_(torch.from_numpy(model.params[f"head.{name}"].copy()))
    params = list(gru.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def step():
        opt.zero_grad()
        out, _ = gru(Xt)
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), yt)
        loss.backward()
        opt.step()
        step.losses.append(loss.item())

    step.losses = []

    def fwd():
        with torch.no_grad():
            out, _ = gru(Xt)
            return head(out[:, -1])

    return step, fwd


def bench_case(name, dtype, threads, repeats, warmup, use_torch, rate, pause):
    """Benchmark one shape at one dtype; returns the JSON record (times in seconds)."""
    B, T, I, H, L = SHAPES[name]
    mgritnn.config.set_num_threads(threads)
    X, y = make_data(B, T, I, dtype)
    model = mgritnn.GRUClassifier(I, H, NUM_CLASSES, num_layers=L, cell="classic", dtype=dtype,
                                  seed=0)
    fns = {}
    fns["mgritnn_step"], fns["mgritnn_fwd"] = mgritnn_fns(model, X, y)
    if use_torch:
        import torch
        torch.set_num_threads(threads)
        fns["torch_step"], fns["torch_fwd"] = torch_fns(model, X, y)
    load_before = os.getloadavg()
    busy_before = harness.cpu_busy(1.0)
    if busy_before is not None and busy_before > 0.2:
        print(f"warning: the CPUs were {100 * busy_before:.0f}% busy before {name} {dtype}: "
              "other processes are running, timings will be slow and noisy", file=sys.stderr)
    t = harness.timeit_many(fns, repeats=repeats, warmup=warmup, pause=pause)
    # loss of the first step (same weights and batch): both libraries compute the same thing
    losses = {k.split("_")[0]: fn.losses[0] for k, fn in fns.items() if k.endswith("_step")}
    f_fwd, f_step = flops(B, T, I, H, L)
    roof_step = f_step / rate["flops_per_s"]
    roof_fwd = f_fwd / rate["flops_per_s"]
    rec = dict(kind="serial", shape=name, B=B, T=T, I=I, H=H, L=L, C=NUM_CLASSES,
               dtype=np.dtype(dtype).name, threads=threads, repeats=repeats,
               flops_fwd=f_fwd, flops_step=f_step,
               gemm_flops_per_s=rate["flops_per_s"], roofline_fwd_s=roof_fwd,
               roofline_step_s=roof_step,
               mem_estimate_bytes=memory_estimate(B, T, I, H, L, np.dtype(dtype).itemsize),
               initial_loss=losses, cpu_busy_before=busy_before, loadavg_before=load_before,
               loadavg_after=os.getloadavg(),
               times=t)
    ms = t["mgritnn_step"]["median_s"]
    rec["mgritnn_step_s"] = ms
    rec["mgritnn_fwd_s"] = t["mgritnn_fwd"]["median_s"]
    rec["mgritnn_compile_s"] = t["mgritnn_step"]["compile_s"]
    rec["step_over_roofline"] = ms / roof_step
    rec["fwd_over_roofline"] = rec["mgritnn_fwd_s"] / roof_fwd
    rec["mgritnn_step_gflops"] = f_step / ms / 1e9
    if use_torch:
        rec["torch_step_s"] = t["torch_step"]["median_s"]
        rec["torch_fwd_s"] = t["torch_fwd"]["median_s"]
        # per-round ratio, then the median: robust to drift between rounds
        rec["speedup_step_vs_torch"] = statistics.median(
            a / b for a, b in zip(t["torch_step"]["times_s"], t["mgritnn_step"]["times_s"]))
        rec["speedup_fwd_vs_torch"] = statistics.median(
            a / b for a, b in zip(t["torch_fwd"]["times_s"], t["mgritnn_fwd"]["times_s"]))
    return rec


def markdown_table(records):
    """The summary table (Markdown) of the benchmark records."""
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.3g}" if v < 1 else f"{1e3 * v:.0f}"

    def x(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["| shape | dtype | mgritnn step (ms) | torch step (ms) | speedup vs torch | "
             "mgritnn fwd (ms) | torch fwd (ms) | roofline step (ms) | step / roofline | "
             "compile (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {ms(r['mgritnn_step_s'])} | {ms(r.get('torch_step_s'))} "
            f"| {x(r.get('speedup_step_vs_torch'))} | {ms(r['mgritnn_fwd_s'])} "
            f"| {ms(r.get('torch_fwd_s'))} | {ms(r['roofline_step_s'])} "
            f"| {x(r['step_over_roofline'], '{:.1f}')} | {x(r['mgritnn_compile_s'], '{:.1f}')} |")
    return "\n".join(lines)


def torch_available():
    """True if PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv=None):
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        description="Serial benchmark of mgritnn (training step and forward pass) against PyTorch, "
                    "with the GEMM roofline. One JSON line per case on stdout (and in --out), a "
                    "Markdown table at the end.")
    p.add_argument("--shapes", default=",".join(SHAPES),
                   help=f"comma-separated shape names out of {', '.join(SHAPES)} "
                        "(B, T, I, H, L: " + "; ".join(f"{k} {v}" for k, v in SHAPES.items())
                        + "; default: all)")
    p.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes")
    p.add_argument("--threads", type=int, default=2, help="numba and torch threads (default 2)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per function (default 5; heavy shapes at most %s)"
                        % ", ".join(f"{k} {v}" for k, v in HEAVY.items()))
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="compare with PyTorch (default: if it can be imported)")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="mgritnn only")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 repeats (1 for heavy shapes), no warm-up, small GEMM probe")
    p.add_argument("--table", metavar="FILE.jsonl", default=None,
                   help="only print the Markdown table of the records in FILE.jsonl (no run)")
    p.add_argument("--pause", type=float, default=0.02,
                   help="seconds of sleep before each timed call, so that idle OpenMP threads of "
                        "the other library stop spinning (default 0.02)")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        p.error(f"unknown shape(s) {bad}; choose from {list(SHAPES)}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in args.dtypes:
        if d not in ("float32", "float64"):
            p.error(f"dtype {d!r}: choose float32 or float64")
    if args.torch is None:
        args.torch = torch_available()
    elif args.torch and not torch_available():
        p.error("--torch given but PyTorch cannot be imported")
    if args.quick:
        args.repeats = min(args.repeats, 2)
    return args


def read_records(path):
    """The ``kind: "serial"`` records of a JSON-lines results file, in file order."""
    import json

    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "serial"]


def main(argv=None):
    """Run the benchmark (or, with ``--table``, print a results file's table); returns the records."""
    args = parse_args(argv)
    if args.table:
        records = read_records(args.table)
        print(markdown_table(records))
        return records
    mgritnn.config.set_num_threads(args.threads)
    if args.torch:
        import torch
        torch.set_num_threads(args.threads)
    run = dict(kind="run", argv=sys.argv[1:] if argv is None else list(argv),
               date=datetime.datetime.now().isoformat(timespec="seconds"),
               shapes=args.shapes, dtypes=args.dtypes, threads=args.threads, repeats=args.repeats,
               quick=args.quick, machine=harness.machine_info(), gemm={}, torch_gemm={})
    n = 1024 if args.quick else 2048
    rates = {}
    for d in args.dtypes:
        rates[d] = harness.gemm_rate(d, n=n, repeats=3 if args.quick else 5, threads=args.threads)
        run["gemm"][d] = rates[d]
        if args.torch:
            run["torch_gemm"][d] = harness.torch_gemm_rate(d, n=n, repeats=3 if args.quick else 5,
                                                           threads=args.threads)
    run["machine"]["numba_threading_layer"] = harness.machine_info()["numba_threading_layer"]
    harness.emit(run, args.out)
    records = []
    for name in args.shapes:
        for d in args.dtypes:
            reps = min(args.repeats, HEAVY[name]) if name in HEAVY else args.repeats
            if args.quick and name in HEAVY:
                reps = 1
            warmup = 0 if (args.quick or name in HEAVY) else 1
            rec = bench_case(name, d, args.threads, reps, warmup, args.torch, rates[d], args.pause)
            harness.emit(rec, args.out)
            records.append(rec)
    print()
    print("GEMM rate (n=%d, %d threads): " % (n, args.threads) + ", ".join(
        f"{d} {rates[d]['flops_per_s'] / 1e9:.0f} GFLOP/s (np.dot in numba)"
        + (f", torch.mm {run['torch_gemm'][d]['flops_per_s'] / 1e9:.0f}" if args.torch else "")
        for d in args.dtypes))
    print(markdown_table(records))
    return records


if __name__ == "__main__":
    main()
