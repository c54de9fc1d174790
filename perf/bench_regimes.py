"""Regimes: which route to a training step wins, on which shape.

One run puts every way of computing a training step (``loss_and_grad_flat`` + Adam, float32,
``cell="implicit"``, 6 classes) side by side on the same shapes:

========================  =====================================  ===============
route                     solver                                 ranks x threads
========================  =====================================  ===============
``serial1``, ``serial2``  ``"serial"``                           1 x 1, 1 x 2
``mgrit-paper-2x1/1x2``   ``MGRITConfig.preset("paper")``        2 x 1, 1 x 2
``mgrit-fast-2x1/1x2``    ``MGRITConfig.preset("fast")``         2 x 1, 1 x 2
``deer-2x1``              ``DEERConfig()``                       2 x 1
``quasi-deer-2x1``        ``DEERConfig(quasi=True)``             2 x 1
========================  =====================================  ===============

on the shapes (B, T, I, H, L) ``R1`` (1, 65536, 8, 64, 1), ``R2`` (4, 16384, 6, 32, 1),
``R3`` (1, 16384, 16, 128, 2) and ``uci_har`` (100, 128, 9, 100, 2) (random data and labels,
seeded, the same on every rank).

Each route is one ``mpiexec -n P python -m mpi4py perf/bench_regimes.py worker ...`` launch (also
P = 1, so that every route pays the same start-up). The worker makes the solver config once and
passes that same object to every call, times the first call apart (numba compilation or cache
load), then ``--repeats`` steps, each after a barrier, restoring the parameters after each Adam
update so every repeat solves the same problem. Per launch it reports the slowest rank's median
step time, the step evaluations of every rank (``SolveStats.step_evals``, forward and adjoint; one
state of the whole layer stack and batch advanced by one step counts one), the peak resident
memory of every rank (``ru_maxrss``, taken before the reference below), the MGRIT cycles or Newton
iterations and the solvers' statuses, and for the non-serial routes the error of the loss and the
cosine between the gradient and the serial solver's (computed on rank 0 from the same initial
parameters). ``loss_and_grad_flat`` is called without ``keys``, so the fast preset's warm start is
off: every call starts from zero, as the first epoch of training does.

Routes run in interleaved rounds (``--rounds``: per shape, every route once per round) so that
they see the same machine load; the table gives the median over rounds, and "vs serial best" is
min(median serial1, median serial2) / the route's median (shown when a serial route ran). A launch
that fails or runs past ``--timeout`` is reported as failed with its reason; that route is not
launched again for that shape.

Commands (from the repository root)::

    PYTHONPATH=. python perf/bench_regimes.py --rounds 3 --repeats 3 \\
        --out perf/results/regimes-$(date +%F).jsonl
    PYTHONPATH=. python perf/bench_regimes.py --shapes R2 --T 2048 --rounds 1 --repeats 1   # quick
    PYTHONPATH=. python perf/bench_regimes.py --shapes uci_har --routes serial1,mgrit-fast-2x1

Output: a ``kind: "run"`` JSON line (command, options, machine and git state), one
``kind: "regime"`` line per launch (with ``cpu_busy_before`` and the load average), one
``kind: "regime_summary"`` line per (shape, route) with the medians over rounds, then the command
and a Markdown table (shape, route, ranks x threads, step, vs serial best, evals/rank, µs per eval,
loss err, grad cos, peak MB, first call), and a second one with the iterations and statuses.

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:  # run as ``python perf/bench_regimes.py`` (perf/ on sys.path) or as ``python -m perf.bench_regimes``
    import harness
    from bench_mgrit import SHAPES as _MGRIT_SHAPES
except ImportError:  # pragma: no cover
    from perf import harness
    from perf.bench_mgrit import SHAPES as _MGRIT_SHAPES

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"R1": (1, 65536, 8, 64, 1), "R2": (4, 16384, 6, 32, 1), "R3": (1, 16384, 16, 128, 2),
          "uci_har": _MGRIT_SHAPES["uci_har"]}
#: route -> (solver, ranks, threads per rank)
ROUTES = {"serial1": ("serial", 1, 1), "serial2": ("serial", 1, 2),
          "mgrit-paper-2x1": ("mgrit-paper", 2, 1), "mgrit-paper-1x2": ("mgrit-paper", 1, 2),
          "mgrit-fast-2x1": ("mgrit-fast", 2, 1), "mgrit-fast-1x2": ("mgrit-fast", 1, 2),
          "deer-2x1": ("deer", 2, 1), "quasi-deer-2x1": ("quasi-deer", 2, 1)}
STATUS = {0: "ok", 1: "not converged", 2: "diverged", 3: "non-finite"}


def make_solver(name, comm=None):
    """The solver of route kind ``name`` (``"serial"`` or a config on the time communicator
    ``comm``; None: MPI's world), to be made once and passed to every call."""
    from mgritnn.solvers import DEERConfig, MGRITConfig, make_solver

    return {"serial": lambda: "serial",
            "mgrit-paper": lambda: make_solver(MGRITConfig.preset("paper"), comm),
            "mgrit-fast": lambda: make_solver(MGRITConfig.preset("fast"), comm),
            "deer": lambda: make_solver(DEERConfig(), comm),
            "quasi-deer": lambda: make_solver(DEERConfig(quasi=True), comm)}[name]()


def measure(comm, step, repeats, extra=dict):
    """Time the training step ``step`` on every rank of ``comm`` (:func:`harness.time_ranks`)
    and gather each rank's figures on rank 0: ``step_s`` (median; the first call without
    repeats), ``first_call_s``, ``evals`` (forward and adjoint ``step_evals`` of the last call),
    ``peak_mb`` (``ru_maxrss``) and what ``extra()`` returns (called after the timing). Returns
    ``(per_rank (None off rank 0), this rank's times, (loss, grad, info) of the last call)``."""
    import resource

    first, times, (loss, g, info) = harness.time_ranks(comm, step, repeats)
    med = statistics.median(times) if times else first
    fs, ad = info["forward"], info["adjoint"]
    per_rank = comm.gather(dict(step_s=med, first_call_s=first, evals=(fs.step_evals, ad.step_evals),
                                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                **extra()),
                           root=0)
    return per_rank, times, (loss, g, info)


def worker(a):
    import numpy as np

    comm, m, X, y, (B, T, I, H, L) = harness.mpi_problem(SHAPES[a.shape], a.threads, T=a.T)
    rank, size = comm.Get_rank(), comm.Get_size()
    solver = make_solver(a.solver)                   # made once: the same object in every call
    step = harness.training_step(m, X, y, solver)    # every call solves the same problem

    per_rank, times, (loss, g, info) = measure(comm, step, a.repeats)
    fs, ad = info["forward"], info["adjoint"]
    if rank != 0:
        return
    evals = [r["evals"] for r in per_rank]
    step_s = max(r["step_s"] for r in per_rank)   # a step takes as long as its slowest rank
    evals_max = max(f + b for f, b in evals)
    rec = dict(shape=a.shape, B=B, T=T, I=I, H=H, L=L, solver=a.solver, ranks=size, threads=a.threads,
               repeats=a.repeats, step_s=step_s, first_call_s=max(r["first_call_s"] for r in per_rank),
               times_s_rank0=times, step_s_per_rank=[r["step_s"] for r in per_rank],
               evals_per_rank=[list(e) for e in evals], evals_max=evals_max,
               us_per_eval=1e6 * step_s / evals_max if evals_max else None,
               peak_mb=max(r["peak_mb"] for r in per_rank),
               peak_mb_per_rank=[r["peak_mb"] for r in per_rank], loss=float(loss),
               fwd_iters=fs.iterations, adj_iters=ad.iterations, fwd_status=fs.status,
               adj_status=ad.status, fwd_message=fs.message, adj_message=ad.message,
               fwd_residual=fs.residual, adj_residual=ad.residual,
               fallback=bool(fs.fallback or ad.fallback))
    if a.solver != "serial":                     # the reference, from the same initial parameters
        ls, gs, _ = m.loss_and_grad_flat(X, y, "serial")
        g64, gs64 = g.astype(np.float64), gs.astype(np.float64)
        rec.update(serial_loss=float(ls), loss_err=abs(float(loss) - float(ls)),
                   grad_cos=float(g64 @ gs64 / np.linalg.norm(g64) / np.linalg.norm(gs64)),
                   grad_rel_err=float(np.linalg.norm(g64 - gs64) / np.linalg.norm(gs64)))
    print(json.dumps(rec), flush=True)


def _launch(ranks, args, timeout, script=__file__):
    """Run the worker of ``script`` under ``mpiexec -n ranks``: ``(record, None)``, or
    ``(None, reason)`` when it fails or runs past ``timeout`` seconds. Unlike ``bench_mgrit._launch``
    (which launches its own worker and raises) a failure is returned, and on timeout the whole
    process group (mpiexec, its proxies and the ranks) is killed, not only mpiexec."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    cmd = [sys.executable, "-m", "mpi4py", script, "worker", *args]
    if ranks > 1 or mpiexec:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, f"timed out after {timeout:g} s"
    if p.returncode:
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
        return None, f"exit {p.returncode}: {(errs or lines or ['no message'])[-1][:300]}"
    try:
        return json.loads(out.strip().splitlines()[-1]), None
    except (IndexError, ValueError):
        return None, f"no result line (stdout: {out[-300:]!r})"


def _list(choices):
    def parse(s):
        items = [x for x in s.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items
    return parse


def _secs(t):
    if t is None:
        return "-"
    return f"{t:.2f} s" if t >= 1 else f"{1e3 * t:.1f} ms" if t >= 0.01 else f"{1e3 * t:.2f} ms"


def run_rounds(groups, rounds, timeout, out, kind, script=__file__):
    """Launch the workers of ``script``: per group of jobs, ``rounds`` interleaved rounds (every
    job of the group once per round), each job one :func:`_launch`. A job is a dict: ``key``
    (where its records go), ``ranks``, ``args`` (the worker's), ``label`` (fields put before the
    round number), ``where`` (fields after it), ``fail`` (fields of a failed launch's line). One
    ``kind`` line per launch (with ``launch_s``, ``cpu_busy_before`` and the load averages before
    and after); a job that fails is not launched again. Returns ``(results, failed)``: key -> the
    lines of its launches that succeeded (each the worker's record with those fields), key ->
    (round, reason)."""
    results, failed = {}, {}
    for group in groups:
        for rnd in range(rounds):
            for job in group:
                key = job["key"]
                if key in failed:
                    continue
                busy, load = harness.cpu_busy(0.5), os.getloadavg()
                t0 = time.perf_counter()
                rec, reason = _launch(job["ranks"], job["args"], timeout, script)
                head = dict(kind=kind, **job["label"], round=rnd, **job["where"],
                            launch_s=time.perf_counter() - t0, cpu_busy_before=busy,
                            loadavg_before=load, loadavg_after=os.getloadavg())
                if rec is None:
                    failed[key] = (rnd, reason)
                    harness.emit(dict(head, **job["fail"], status="failed", reason=reason), out)
                else:
                    line = dict(head, status="ok", **rec)
                    results.setdefault(key, []).append(line)
                    harness.emit(line, out)
    return results, failed


def run_line(a):
    """The ``kind: "run"`` line of a run (command, options, machine and git state); returns the
    command as a copyable line."""
    command = "PYTHONPATH=. " + shlex.join(["python", *sys.argv])
    harness.emit(dict(kind="run", command=command, args={k: v for k, v in vars(a).items() if k != "cmd"},
                      machine=harness.machine_info()), a.out)
    return command


def bench(a):
    command = run_line(a)
    groups = []
    for shape in a.shapes:
        jobs = []
        for route in a.routes:
            solver, P, threads = ROUTES[route]
            args = ["--shape", shape, "--solver", solver, "--threads", str(threads),
                    "--repeats", str(a.repeats)] + (["--T", str(a.T)] if a.T else [])
            jobs.append(dict(key=(shape, route), ranks=P, args=args, label=dict(route=route),
                             where=dict(ranks=P, threads=threads), fail=dict(shape=shape)))
        groups.append(jobs)
    results, failed = run_rounds(groups, a.rounds, a.timeout, a.out, "regime")
    rows = _summaries(a, results, failed)
    _table(a, command, rows)


def _summaries(a, results, failed):
    """Medians over rounds per (shape, route), and the speedup against the best serial route."""
    rows = []
    for shape in a.shapes:
        med = {route: statistics.median(r["step_s"] for r in results[(shape, route)])
               for route in a.routes if (shape, route) in results}
        serial = [med[r] for r in ("serial1", "serial2") if r in med]
        best = min(serial) if serial else None
        for route in a.routes:
            recs = results.get((shape, route), [])
            solver, P, threads = ROUTES[route]
            row = dict(kind="regime_summary", shape=shape, route=route, ranks=P, threads=threads,
                       rounds=len(recs), failed=failed.get((shape, route)))
            if recs:
                last = recs[-1]
                row.update({k: last[k] for k in ("B", "T", "I", "H", "L", "evals_max", "fwd_iters",
                                                 "adj_iters", "fwd_status", "adj_status",
                                                 "fwd_message", "adj_message", "fallback")})
                row.update(step_s=med[route], serial_best_s=best,
                           speedup_vs_serial_best=best / med[route] if best else None,
                           us_per_eval=1e6 * med[route] / last["evals_max"] if last["evals_max"] else None,
                           first_call_s=statistics.median(r["first_call_s"] for r in recs),
                           peak_mb=max(r["peak_mb"] for r in recs),
                           loss_err=(statistics.median(r["loss_err"] for r in recs)
                                     if "loss_err" in last else None),
                           grad_cos=(statistics.median(r["grad_cos"] for r in recs)
                                     if "grad_cos" in last else None))
            harness.emit(row, a.out)
            rows.append(row)
    return rows


def print_command(command, detail, info=None):
    """Print the command of a run and the code it measured (HEAD and uncommitted files: ``info``,
    a :func:`harness.git_state` record, default the working tree's now), then ``detail``, above
    its tables."""
    info = info or harness.git_state()
    print(f"\ncommand: {command}")
    print(f"code: {info['git']}" + (f" + uncommitted changes to {', '.join(info['git_dirty'])}"
                                    if info["git_dirty"] else "")
          + f"; {detail}\n")


def _table(a, command, rows):
    print_command(command, f"{a.rounds} round(s) x {a.repeats} repeat(s); medians over rounds")
    print("| shape (B, T, I, H, L) | route | ranks x threads | step (median) | vs serial best "
          "| evals/rank | µs per eval | loss err | grad cos | peak MB | first call |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in rows:
        B, T, I, H, L = SHAPES[r["shape"]]
        T = r.get("T", a.T or T)
        shape = f"{r['shape']} ({B}, {T}, {I}, {H}, {L})"
        rt = f"{r['ranks']} x {r['threads']}"
        if r["failed"]:
            rnd, reason = r["failed"]
            reason = reason.replace("|", "/")
            if not r["rounds"]:
                print(f"| {shape} | {r['route']} | {rt} | failed: {reason} | - | - | - | - | - | - | - |")
                continue
            notes.append(f"* {r['shape']} {r['route']}: failed in round {rnd + 1} ({reason}); "
                         f"figures from {r['rounds']} round(s)")
        serial = r["route"].startswith("serial")
        sp, us = r["speedup_vs_serial_best"], r["us_per_eval"]
        err = "ref" if serial else f"{r['loss_err']:.1e}"
        cos = "ref" if serial else f"{r['grad_cos']:.5f}"
        print(f"| {shape} | {r['route']} | {rt} | {_secs(r['step_s'])} | "
              f"{'-' if sp is None else f'{sp:.2f}x'} | {r['evals_max']} | "
              f"{'-' if us is None else f'{us:.1f}'} | {err} | {cos} | {r['peak_mb']:.0f} | "
              f"{_secs(r['first_call_s'])} |")
    for n in notes:
        print(n)
    its = [r for r in rows if r["rounds"] and not r["route"].startswith("serial")]
    if its:
        print("\n| shape | route | fwd iterations | adj iterations | status fwd / adj |")
        print("|---|---|---:|---:|---|")
        for r in its:
            st = f"{r['fwd_message']} / {r['adj_message']}" + (" (fell back to serial)"
                                                               if r["fallback"] else "")
            print(f"| {r['shape']} | {r['route']} | {r['fwd_iters']} | {r['adj_iters']} | {st} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(run under mpiexec by the driver)")
    w.add_argument("--shape", choices=sorted(SHAPES), required=True)
    w.add_argument("--T", type=int, default=None)
    w.add_argument("--solver", choices=sorted({s for s, _, _ in ROUTES.values()}), required=True)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", type=_list(list(SHAPES)), default=list(SHAPES),
                   help=f"comma-separated, of {', '.join(SHAPES)} (default all)")
    p.add_argument("--routes", type=_list(list(ROUTES)), default=list(ROUTES),
                   help=f"comma-separated, of {', '.join(ROUTES)} (default all)")
    p.add_argument("--T", type=int, default=None, help="override every shape's T (quick checks)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per launch (default 3)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per launch (default 1800)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    a = p.parse_args()
    if a.cmd == "worker":
        worker(a)
    else:
        if a.rounds < 1 or a.repeats < 0:
            p.error("--rounds must be at least 1 and --repeats at least 0")
        bench(a)


if __name__ == "__main__":
    main()
