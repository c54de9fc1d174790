"""Where an MGRIT training step's time goes.

One training step (``loss_and_grad_flat``, float32, ``cell="implicit"``) with an MGRIT preset on
P ranks x t threads, taken apart per rank:

* the model's parts: set-up (``forward`` minus the solve), the forward solve (with the layer-0
  input projection), the adjoint solve (with every parameter gradient, the layer-0 input weights'
  included), the head, and the reduction over ranks (gradient allreduce, loss and logits
  broadcast);
* inside each solve, every phase per level (``SolveStats.phases``): F- and C-relaxation, residual,
  restriction, coarsest sweep, coarse-grid correction, the final sweep, the waits for the left
  neighbour, the adjoint's coarse linearizations and the parameter-gradient pass: seconds, calls,
  step evaluations and microseconds per evaluation;
* the kernel alone: the same cell's compiled stack kernel (:meth:`Cell.advance`) sweeping the
  rank's fine steps as one chain, and the serial solver's forward sweep and BPTT per step, timed
  in the same process. A phase's time minus its evaluations at the kernel's rate is what the
  phase spends outside the kernel (Python, allocation, copies, gathers).

Every figure is the median over ``--repeats`` steps (after one untimed first call, reported apart).

Commands (from the repository root)::

    PYTHONPATH=. python perf/profile_mgrit.py --shape R1 --preset fast --ranks 2 --threads 1
    PYTHONPATH=. python perf/profile_mgrit.py --shape R2 --preset paper --ranks 2 --threads 1
    PYTHONPATH=. python perf/profile_mgrit.py --shape R1 --preset fast --ranks 1 --threads 2

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import argparse
import json
import statistics
import sys
import time

try:  # run as ``python perf/profile_mgrit.py`` (perf/ on sys.path) or as a module
    import harness
    from bench_regimes import SHAPES, _launch
except ImportError:  # pragma: no cover
    from perf import harness
    from perf.bench_regimes import SHAPES, _launch


def worker(a):
    import numpy as np

    from mgritnn.cells import project
    from mgritnn.solvers import MGRITConfig, SerialSolver

    comm, m, X, y, (B, T, I, H, L) = harness.mpi_problem(SHAPES[a.shape], a.threads, T=a.T)
    rank, size = comm.Get_rank(), comm.Get_size()
    solver = MGRITConfig.preset(a.preset, **json.loads(a.options)).make_solver()

    def step():
        comm.Barrier()
        t0 = time.perf_counter()
        _, _, info = m.loss_and_grad_flat(X, y, solver)
        return time.perf_counter() - t0, info

    first, _ = step()
    runs = [step() for _ in range(a.repeats)]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    parts = {
        "step": med([t for t, _ in runs]),
        "model set-up before the forward solve": med([i["time_forward"] - i["forward"].seconds for _, i in runs]),
        "forward solve (with the layer-0 input projection)": med([i["forward"].seconds for _, i in runs]),
        "adjoint solve (with its set-up and all parameter gradients)":
            med([i["adjoint"].seconds for _, i in runs]),
        "head":
            med([i["time_adjoint"] - i["adjoint"].seconds for _, i in runs]),
        "reduce (allreduce gradient, bcast loss)": med([i["time_reduce"] for _, i in runs]),
    }
    phases = {}
    for kind in ("forward", "adjoint"):
        names = runs[0][1][kind].phases.keys()
        for name in names:
            recs = [i[kind].phases[name] for _, i in runs]
            phases[f"{kind} {name}"] = [med([r[0] for r in recs]), recs[0][1], recs[0][2]]
    # the kernel alone: the rank's fine steps as one chain, and the serial solver per step
    w = m.weights()
    lo, hi = solver.local_steps(T)
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    ax0 = project(Xt[lo:hi], w.Wx[0], w.bx[0])
    n = hi - lo
    sw = w.stacked()
    u = np.zeros((n + 1, L, B, H), np.float32)
    dts = np.ones(n, np.float32)
    one = np.array([0], np.int64)
    chain = lambda: m.cell.advance(sw, ax0, dts, u, one, u, one + 1, one, np.array([n]))  # noqa: E731
    chain()
    kern = med([_timed(chain) for _ in range(a.repeats)]) / n
    ser = SerialSolver()
    h0 = np.zeros((L, B, H), np.float32)
    ser_fwd = lambda: ser.forward(m.cell, w, Xt, h0)  # noqa: E731
    ser_fwd()
    s_fwd = med([_timed(ser_fwd) for _ in range(a.repeats)]) / T
    _, state, _ = ser.forward(m.cell, w, Xt, h0)
    grads = m.cell.zero_grads(w)
    lam = np.ones((L, B, H), np.float32)
    ser_adj = lambda: ser.adjoint(m.cell, w, state, lam, grads)  # noqa: E731
    ser_adj()
    s_adj = med([_timed(ser_adj) for _ in range(a.repeats)]) / T
    rec = dict(rank=rank, parts=parts, phases=phases, first_call_s=first, kernel_us=1e6 * kern,
               serial_fwd_us=1e6 * s_fwd, serial_adj_us=1e6 * s_adj,
               evals=(runs[0][1]["forward"].step_evals, runs[0][1]["adjoint"].step_evals))
    recs = comm.gather(rec, root=0)
    if rank == 0:
        print(json.dumps(dict(shape=a.shape, B=B, T=T, I=I, H=H, L=L, preset=a.preset,
                              options=json.loads(a.options), ranks=size, threads=a.threads,
                              repeats=a.repeats, per_rank=recs)), flush=True)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(t):
    return f"{1e3 * t:.1f}"


def profile(a):
    args = ["--shape", a.shape, "--preset", a.preset, "--options", a.options, "--threads",
            str(a.threads), "--repeats", str(a.repeats)] + (["--T", str(a.T)] if a.T else [])
    rec, why = _launch(a.ranks, args, a.timeout, script=__file__)
    if rec is None:
        sys.exit(f"profile failed: {why}")
    rec.update(kind="mgrit_profile", command=" ".join(sys.argv), machine=harness.machine_info(),
               git=harness.git_state())
    if a.out:
        harness.emit(rec, a.out)
    ranks = rec["per_rank"]
    print(f"command: PYTHONPATH=. python {' '.join(sys.argv)}")
    print(f"\nshape {a.shape} (B, T, I, H, L) = ({rec['B']}, {rec['T']}, {rec['I']}, {rec['H']}, "
          f"{rec['L']}), MGRIT preset {a.preset!r} {rec['options'] or ''}, {a.ranks} rank(s) x "
          f"{a.threads} thread(s); medians of {a.repeats} steps; first call "
          f"{max(r['first_call_s'] for r in ranks):.2f} s")
    head = " | ".join(f"rank {r['rank']} ms" for r in ranks)
    print(f"\n| part of the step | {head} |\n|---|" + "---:|" * len(ranks))
    for name in ranks[0]["parts"]:
        print(f"| {name} | " + " | ".join(_ms(r["parts"][name]) for r in ranks) + " |")
    print(f"\n| phase [level] | {head} | calls | evaluations (rank 0) | µs per evaluation (rank 0) "
          f"| ms outside the kernel (rank 0) |\n|---|" + "---:|" * (len(ranks) + 4))
    r0 = ranks[0]
    for name, (sec, calls, ev) in r0["phases"].items():
        rate = f"{1e6 * sec / ev:.2f}" if ev else "-"
        outside = _ms(sec - 1e-6 * ev * r0["kernel_us"]) if ev else "-"
        cols = " | ".join(_ms(r["phases"][name][0]) if name in r["phases"] else "-" for r in ranks)
        print(f"| {name} | {cols} | {calls} | {ev} | {rate} | {outside} |")
    fwd, adj = r0["evals"]
    print(f"\nrank 0: {fwd} forward + {adj} adjoint step evaluations; kernel alone "
          f"{r0['kernel_us']:.2f} µs per step (one chain over the rank's {rec['T'] // a.ranks} fine "
          f"steps); serial solver {r0['serial_fwd_us']:.2f} µs per forward step, "
          f"{r0['serial_adj_us']:.2f} µs per BPTT step (with its parameter gradients)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    for sp in (p, w := sub.add_parser("worker", help="(run under mpiexec by the driver)")):
        sp.add_argument("--shape", choices=sorted(SHAPES), default="R1")
        sp.add_argument("--T", type=int, default=None, help="override the shape's T")
        sp.add_argument("--preset", default="fast", help="MGRITConfig.preset name")
        sp.add_argument("--options", default="{}", help="JSON dict of MGRITConfig overrides")
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None, help="append the JSON record here")
    a = p.parse_args()
    (worker if a.cmd == "worker" else profile)(a)


if __name__ == "__main__":
    main()
