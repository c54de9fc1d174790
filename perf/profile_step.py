"""Where one mgritnn training step spends its time, piece by piece, against each piece's GEMM bound.

The real step (``GRUClassifier.loss_and_grad_flat`` + the ``adam`` update, serial solver) runs with
timing wrappers around the functions the Python drivers call, so the profile follows whatever the
kernels currently are; everything not wrapped (checks, allocations, head and loss, bias sums,
Python glue) is ``other``. Wrapped, with the name each call gets in the serial step's call order:

``proj_l0``          layer-0 input projection ``X W_x0^T + b_x0`` (``gru._affine`` via ``project``)
``proj_l{k}``        input projection of layer k > 0 (``gru._affine``)
``fwd_sweep_l{k}``   serial sweep of layer k (``gru._layer_sequence_forward``: per time step the
                     recurrent GEMM ``h W_h^T`` on row blocks plus the gates)
``bptt_l{k}``        backpropagation through time of layer k (``gru._layer_sequence_vjp``: per time
                     step the gate cotangents plus the GEMM ``dah W_h`` on row blocks)
``wgrad_hh_l{k}``    ``dW_hh += dah^T h`` (``accumulate_outer``)
``wgrad_ih_l{k}``    ``dW_ih += dax^T x`` (``accumulate_outer``; layer 0's by the serial solver, ``project_inputs_vjp``)
``dx_l{k}``          cotangent sent to the layer below, ``dax W_x`` (``gru._affine``), k > 0
``adam``             ``adam`` update and ``apply_updates`` on the flat buffer

Each piece's GEMM FLOPs divided by the large-GEMM rate (:func:`harness.gemm_rate`) is its lower
bound. Two micro-benchmarks separate what the sweeps are made of: the fork/join cost of a numba
parallel region, and the rate of the recurrent row-block GEMMs alone (``config.row_blocks(B)``
blocks of ``h W_h^T`` per time step), in parallel and on one thread.
"""
import argparse
import statistics
import time

import numba
import numpy as np
from numba import prange

import mgritnn
from mgritnn.cells import gru as G
from mgritnn.config import row_blocks
from mgritnn.optim import adam, apply_updates

try:
    import harness
    from bench_serial import NUM_CLASSES, SHAPES, make_data
except ImportError:  # pragma: no cover
    from perf import harness
    from perf.bench_serial import NUM_CLASSES, SHAPES, make_data

#: (module, attribute) pairs wrapped by :class:`Profiler`; the same function reached through two
#: modules is wrapped in both (no double counting: neither calls the other).
WRAPPED = [(G, "_affine"), (G, "_layer_sequence_forward"), (G, "_layer_sequence_vjp"),
           (G, "accumulate_outer")]


class Profiler:
    """Context manager that times every call of the :data:`WRAPPED` functions, in order.

    ``calls`` is the list of (function name, seconds) of the calls since the last :meth:`reset`.
    """

    def __init__(self):
        self.calls = []
        self._saved = []

    def _wrap(self, name, fn):
        calls = self.calls

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((name, time.perf_counter() - t0))
        return timed

    def reset(self):
        self.calls.clear()

    def __enter__(self):
        for mod, attr in WRAPPED:
            fn = getattr(mod, attr, None)
            if fn is not None:
                self._saved.append((mod, attr, fn))
                setattr(mod, attr, self._wrap(attr, fn))
        return self

    def __exit__(self, *exc):
        for mod, attr, fn in reversed(self._saved):
            setattr(mod, attr, fn)
        self._saved.clear()


def serial_labels(L):
    """Names of the wrapped calls of one serial step of an L-layer model, in call order."""
    fwd = ["proj_l0"]
    for l in range(L):
        if l > 0:
            fwd.append(f"proj_l{l}")
        fwd.append(f"fwd_sweep_l{l}")
    bwd = []
    for l in range(L - 1, -1, -1):
        bwd += [f"bptt_l{l}", f"wgrad_hh_l{l}"]
        if l > 0:
            bwd += [f"wgrad_ih_l{l}", f"dx_l{l}"]
    return fwd + bwd + ["wgrad_ih_l0"]


def label_calls(calls, L):
    """Name the calls of one step (:func:`serial_labels`); raw ``function#k`` names if the call
    sequence is not the expected one (the drivers changed)."""
    expected_fn = {"proj": "_affine", "dx": "_affine", "fwd": "_layer_sequence_forward",
                   "bptt": "_layer_sequence_vjp", "wgrad": "accumulate_outer"}
    labels = serial_labels(L)
    if len(calls) == len(labels) and all(expected_fn[lab.split("_")[0]] == fn
                                          for lab, (fn, _) in zip(labels, calls)):
        return {lab: s for lab, (_, s) in zip(labels, calls)}
    out, seen = {}, {}
    for fn, s in calls:
        k = seen[fn] = seen.get(fn, -1) + 1
        out[f"{fn}#{k}"] = s
    return out


def piece_flops(B, T, I, H, L):
    """GEMM FLOPs of each named piece (the others do none)."""
    f = {"proj_l0": 2.0 * T * B * I * 3 * H, "wgrad_ih_l0": 2.0 * T * B * I * 3 * H}
    for l in range(L):
        f[f"fwd_sweep_l{l}"] = 2.0 * T * B * H * 3 * H
        f[f"bptt_l{l}"] = 2.0 * T * B * 3 * H * H
        f[f"wgrad_hh_l{l}"] = 2.0 * T * B * 3 * H * H
        if l > 0:
            for k in ("proj", "wgrad_ih", "dx"):
                f[f"{k}_l{l}"] = 2.0 * T * B * H * 3 * H
    return f


@numba.njit(parallel=True, nogil=True)
def _empty_regions(T, nblk, out):
    """T parallel regions of nblk near-empty iterations, one after the other."""
    for t in range(T):
        for j in prange(nblk):
            out[j] += 1.0


@numba.njit(parallel=True, nogil=True)
def _small_gemms_par(h, WT, Gm, T, nblk):
    """One parallel region; each thread does T GEMMs on its row block of h (B, H) @ WT (H, 3H):
    the recurrent GEMMs of one sweep alone, without gate arithmetic."""
    B = h.shape[0]
    for j in prange(nblk):
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        for t in range(T):
            np.dot(h[lo:hi], WT, Gm[lo:hi])


@numba.njit(nogil=True)
def _small_gemms_serial(h, WT, Gm, T, nblk):
    """The same GEMMs as :func:`_small_gemms_par` on one thread."""
    B = h.shape[0]
    for j in range(nblk):
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        for t in range(T):
            np.dot(h[lo:hi], WT, Gm[lo:hi])


def micro(B, T, H, dtype, repeats):
    """Fork/join cost of a parallel region and the rate of one sweep's recurrent row-block GEMMs.

    Returns
    -------
    dict
        ``nblk``, ``rows_per_block``; ``region_s`` (seconds per near-empty parallel region);
        ``small_gemm_par_s`` / ``small_gemm_serial_s`` (the T row-block GEMM rounds of one layer's
        sweep, threads over blocks / one thread) and their rates in FLOP/s.
    """
    nblk = row_blocks(B, model.params["weight_hh_l0"].nbytes)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((B, H)).astype(dtype)
    WT = rng.standard_normal((H, 3 * H)).astype(dtype)
    Gm = np.empty((B, 3 * H), dtype)
    out = np.zeros(nblk)
    t = harness.timeit_many({
        "regions": lambda: _empty_regions(T, nblk, out),
        "gemm_par": lambda: _small_gemms_par(h, WT, Gm, T, nblk),
        "gemm_serial": lambda: _small_gemms_serial(h, WT, Gm, T, nblk),
    }, repeats=repeats, warmup=2)
    fl = 2.0 * T * B * H * 3 * H
    return dict(nblk=nblk, rows_per_block=B / nblk, region_s=t["regions"]["median_s"] / T,
                small_gemm_par_s=t["gemm_par"]["median_s"],
                small_gemm_serial_s=t["gemm_serial"]["median_s"],
                small_gemm_par_flops_per_s=fl / t["gemm_par"]["median_s"],
                small_gemm_serial_flops_per_s=fl / t["gemm_serial"]["median_s"])


def profile(name="uci_har", dtype="float32", threads=2, repeats=21):
    """Time the real step ``repeats`` times with the wrappers; returns the JSON record."""
    mgritnn.config.set_num_threads(threads)
    B, T, I, H, L = SHAPES[name]
    rate = harness.gemm_rate(dtype, threads=threads)
    X, y = make_data(B, T, I, dtype)
    model = mgritnn.GRUClassifier(I, H, NUM_CLASSES, num_layers=L, dtype=dtype, seed=0)
    opt = adam(1e-3)
    state = [opt.init(model.flat)]
    per_step = []
    prof = Profiler()

    def step():
        prof.reset()
        t0 = time.perf_counter()
        _, gflat, _ = model.loss_and_grad_flat(X, y)
        t1 = time.perf_counter()
        updates, state[0] = opt.update(gflat, state[0], model.flat)
        apply_updates(model.flat, updates, inplace=True)
        t2 = time.perf_counter()
        d = label_calls(list(prof.calls), L)
        d["adam"] = t2 - t1
        d["other"] = (t1 - t0) - sum(s for _, s in prof.calls)
        per_step.append(d)

    def plain():
        _, gflat, _ = model.loss_and_grad_flat(X, y)
        updates, state[0] = opt.update(gflat, state[0], model.flat)
        apply_updates(model.flat, updates, inplace=True)

    t_plain = harness.timeit(plain, repeats=3, warmup=1)  # compile before wrapping
    with prof:
        t = harness.timeit_many({"step": step}, repeats=repeats, warmup=1, pause=0.005)
    t_plain = harness.timeit(plain, repeats=repeats, warmup=0, pause=0.005)
    steps = per_step[-repeats:]
    med = {k: statistics.median(d[k] for d in steps) for k in steps[0]}
    return dict(kind="profile", shape=name, dtype=dtype, threads=threads, repeats=repeats,
                B=B, T=T, I=I, H=H, L=L, machine=harness.machine_info(), gemm=rate,
                total_step_s=t["step"]["median_s"], total_unwrapped_s=t_plain["median_s"],
                pieces_s=med, pieces_all_s=steps, pieces_flops=piece_flops(B, T, I, H, L),
                micro=micro(B, T, H, dtype, repeats))


def print_table(rec):
    """Markdown table of a profile record."""
    med, fl, rate = rec["pieces_s"], rec["pieces_flops"], rec["gemm"]["flops_per_s"]
    mic = rec["micro"]
    total = sum(med.values())
    print(f"\n{rec['shape']} {rec['dtype']}, {rec['threads']} threads: step "
          f"{1e3 * rec['total_step_s']:.1f} ms with the wrappers, "
          f"{1e3 * rec['total_unwrapped_s']:.1f} ms without; large-GEMM rate "
          f"{rate / 1e9:.0f} GFLOP/s")
    print("\n| piece | ms | share | GEMM GFLOP | GEMM bound (ms) | x bound |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in med.items():
        f = fl.get(k, 0.0)
        bound = f / rate
        print(f"| {k} | {1e3 * v:.2f} | {100 * v / total:.0f}% | {f / 1e9:.3f} | "
              f"{1e3 * bound:.2f} | {'-' if not f else f'{v / bound:.1f}'} |")
    fsum = sum(fl.values())
    print(f"| total | {1e3 * total:.2f} | 100% | {fsum / 1e9:.3f} | {1e3 * fsum / rate:.2f} | "
          f"{total / (fsum / rate):.1f} |")
    T, H = rec["T"], rec["H"]
    print(f"\nparallel region fork/join: {1e6 * mic['region_s']:.1f} us")
    print(f"recurrent row-block GEMMs of one layer's sweep ({mic['nblk']} blocks of "
          f"{mic['rows_per_block']:.0f} rows x {H} @ {H} x {3 * H}, T={T}): "
          f"{1e3 * mic['small_gemm_par_s']:.2f} ms on {rec['threads']} threads "
          f"({mic['small_gemm_par_flops_per_s'] / 1e9:.0f} GFLOP/s), "
          f"{1e3 * mic['small_gemm_serial_s']:.2f} ms on one "
          f"({mic['small_gemm_serial_flops_per_s'] / 1e9:.0f} GFLOP/s)")


def main(argv=None):
    """Profile one step; print one JSON record and a Markdown table of the pieces."""
    p = argparse.ArgumentParser(description="Per-piece profile of one mgritnn training step.")
    p.add_argument("--shape", default="uci_har", choices=list(SHAPES))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", default=None, help="append the JSON record to this file")
    args = p.parse_args(argv)
    rec = profile(args.shape, args.dtype, args.threads, args.repeats)
    harness.emit(rec, args.out)
    print_table(rec)
    return rec


if __name__ == "__main__":
    main()
