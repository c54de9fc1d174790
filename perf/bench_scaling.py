"""Strong and weak scaling of a training step over MPI ranks, measured on real cores.

Commands (from the repository root)::

    # full run: every shape and route, P = 1, 2, 4, ... up to the cores of this machine
    PYTHONPATH=. python perf/bench_scaling.py --repeats 3 --out perf/results/scaling-$(date +%F).jsonl
    # (dense DEER at hmdb holds a T B H^2 Jacobian, about 4 GB per layer in float32, and its scan
    # is O(T B H^3) per Newton iteration: for hmdb add
    # --routes serial,mgrit-paper,mgrit-fast,data-time,quasi-deer)
    # the run of results/scaling-2026-12-03.jsonl (2 cores: P = 4 only counts step evaluations)
    PYTHONPATH=. python perf/bench_scaling.py --shapes uci_har,R2 --scaling strong --max-ranks 4 \\
        --repeats 3 --out perf/results/scaling-2026-12-03.jsonl
    PYTHONPATH=. python perf/bench_scaling.py --shapes R2 --scaling weak --T0 4096 --max-ranks 4 \\
        --repeats 3 --out perf/results/scaling-2026-12-03.jsonl
    # quick end-to-end check (R2 with T = 512, weak T0 = 128, 1 repeat, P = 1, 2, 4)
    PYTHONPATH=. python perf/bench_scaling.py --quick
    # what would be launched, without launching anything
    PYTHONPATH=. python perf/bench_scaling.py --dry-run --max-ranks 8
    # the tables of a results file
    PYTHONPATH=. python perf/bench_scaling.py --table perf/results/scaling-2026-12-03.jsonl

What is measured: one training step (``loss_and_grad_flat`` + Adam, float32, ``cell="implicit"``,
6 classes, random seeded data; :func:`harness.training_step`) per route, on P = 1, 2, 4, ... MPI
ranks up to ``--max-ranks`` (default: the cores this process may run on, ``os.sched_getaffinity``).

Routes (the ``route`` of a point; ranks x threads per rank):

* ``serial``: one process with t = P numba threads (1 x t; only up to the cores: numba refuses
  more threads, and the step evaluations do not depend on them); with weak scaling also 1 x 1 at
  every T, the reference of the speedups.
* ``mgrit-paper``, ``mgrit-fast``: ``MGRITConfig.preset("paper" / "fast")`` on P time ranks x 1
  thread (the fast preset without sample keys: no warm start, as in a first epoch).
* data x time: ``data_parallel`` = D groups (every D > 1 dividing P) x P / D time ranks, each
  group a share of the batch rows (``np.array_split``, as the Trainer splits a batch) and the
  gradient summed over the groups (weighted by their shares) inside the step, with the
  communicators of :class:`mgritnn.train._Ranks` (``split_data_time``). The time solver is
  ``--data-solver`` (default ``mgrit-fast``) on P / D > 1 time ranks and ``serial`` on one (pure
  data parallelism); the route is that solver's name with ``data_parallel`` = D.
* ``deer``, ``quasi-deer``: ``DEERConfig()`` / ``DEERConfig(quasi=True)`` on P ranks x 1 thread.
* Layer parallelism (layers of the stack on different ranks) does not exist in mgritnn yet, so
  it has no route here.

Shapes (B, T, I, H, L): ``uci_har`` (100, 128, 9, 100, 2); ``R1`` (1, 65536, 8, 64, 1) and ``R2``
(4, 16384, 6, 32, 1) (the small-batch long shapes of bench_regimes.py); ``hmdb`` (``--hmdb-batch``,
default 8, 128, 1000, 1000, 2): HMDB51 features with fewer samples. Strong scaling: the shape
fixed (``--T`` overrides T), P grows. Weak scaling: T = T0 * P (``--T0``, default the shape's T
divided by the largest P).

Each (route, P, threads, D, T) is one ``mpiexec -n P python -m mpi4py perf/bench_scaling.py worker
...`` launch, by bench_regimes.py's machinery (:func:`bench_regimes.run_rounds`, ``_launch``,
``measure``): the first call timed apart, then ``--repeats`` steps each after a barrier, the
parameters restored after every Adam update; launches of one (shape, scaling) run in interleaved
rounds (``--rounds``), medians over rounds. A launch whose ranks x threads exceed the cores is
*oversubscribed*: it only counts step evaluations (no timed repeats); its times are null in the
JSON and shown as "—" in the tables.

Output, JSON lines: a ``kind: "run"`` line (command, options, machine, git state); a
``kind: "launch"`` line per launch (all the worker's figures per rank, ``cpu_busy_before``, load
averages before and after); a ``kind: "point"`` line per point with exactly the keys kind, shape
([B, T, I, H, L]), shape_name, scaling, route, ranks, threads, data_parallel, seconds (median step
time of the slowest rank), step_evals ([forward, adjoint] per rank), wait (``SolveStats.wait_time``
of the forward and adjoint solves, per rank the median over the repeats, the most of any rank),
phases (rank 0's ``SolveStats.phases`` of the forward and adjoint solves: name -> [seconds (median
over the repeats), calls, step evaluations]), first_call (the slowest rank's first call), oversubscribed,
repeats (timed steps per launch); then a Markdown table per (shape, scaling): route, P x t, T,
step time (marked * when other processes kept the CPUs more than 20 % busy in the half second
before the launch, the median over rounds), speedup vs serial 1 x 1 at the same T, evals/rank
(forward + adjoint, the most of any rank), wait.

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import argparse
import json
import os
import statistics

try:  # run as ``python perf/bench_scaling.py`` (perf/ on sys.path) or as ``python -m perf.bench_scaling``
    import bench_regimes
    import harness
    from bench_serial import SHAPES as _SERIAL_SHAPES
except ImportError:  # pragma: no cover
    from perf import bench_regimes, harness
    from perf.bench_serial import SHAPES as _SERIAL_SHAPES

SHAPE_NAMES = ("uci_har", "R1", "R2", "hmdb")
ROUTES = ("serial", "mgrit-paper", "mgrit-fast", "data-time", "deer", "quasi-deer")
QUICK_T = 512          #: --quick: the longest T of strong scaling


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def shapes(hmdb_batch):
    """Shape name -> (B, T, I, H, L)."""
    s = {k: bench_regimes.SHAPES[k] for k in ("uci_har", "R1", "R2")}
    s["hmdb"] = (hmdb_batch,) + tuple(_SERIAL_SHAPES["hmdb51"][1:])
    return s


# -- the worker (under mpiexec) -------------------------------------------------------------------

def _phases(stats_list, timed):
    """Per phase of the solves in ``stats_list`` (one SolveStats per call): [median seconds,
    calls, step evaluations]; seconds None when not ``timed``."""
    names = stats_list[-1].phases
    return {k: [statistics.median(s.phases[k][0] for s in stats_list) if timed else None,
                v[1], v[2]] for k, v in names.items()}


def worker(a):
    import numpy as np

    from mgritnn.train import _Ranks

    comm, m, X, y, (B, T, I, H, L) = harness.mpi_problem(a.dims, a.threads)
    ranks = _Ranks(comm, a.data_parallel)
    part = np.array_split(np.arange(B), a.data_parallel)[ranks.group]
    share = len(part) / B

    def reduce(g):                                  # the whole batch's mean gradient
        return ranks.sum_over_data(g * g.dtype.type(share))

    solver = bench_regimes.make_solver(a.solver, ranks.time)
    step = harness.training_step(m, X[part], y[part], solver,
                                 reduce=reduce if a.data_parallel > 1 else None)
    seen = []                                        # (forward, adjoint) SolveStats of every call

    def timed_step():
        r = step()
        seen.append((r[2]["forward"], r[2]["adjoint"]))
        return r

    def extra():
        calls = seen[1:] or seen                     # the timed repeats (the first call without)
        return dict(wait_s=statistics.median(f.wait_time + b.wait_time for f, b in calls),
                    phases=dict(forward=_phases([f for f, _ in calls], a.repeats > 0),
                                adjoint=_phases([b for _, b in calls], a.repeats > 0)))

    per_rank, times, (loss, g, info) = bench_regimes.measure(comm, timed_step, a.repeats, extra)
    if comm.Get_rank() != 0:
        return
    fs, ad = info["forward"], info["adjoint"]
    rec = dict(dims=[B, T, I, H, L], solver=a.solver, ranks=comm.Get_size(), threads=a.threads,
               data_parallel=a.data_parallel, repeats=a.repeats,
               step_s=max(r["step_s"] for r in per_rank), step_s_per_rank=[r["step_s"] for r in per_rank],
               first_call_s=max(r["first_call_s"] for r in per_rank), times_s_rank0=times,
               evals_per_rank=[list(r["evals"]) for r in per_rank],
               wait_s=max(r["wait_s"] for r in per_rank), wait_s_per_rank=[r["wait_s"] for r in per_rank],
               phases=per_rank[0]["phases"], peak_mb=max(r["peak_mb"] for r in per_rank),
               loss=float(loss), fwd_iters=fs.iterations, adj_iters=ad.iterations,
               fwd_message=fs.message, adj_message=ad.message)
    print(json.dumps(rec), flush=True)


# -- the driver ------------------------------------------------------------------------------------

def plan(a):
    """The launches of the run: per (shape, scaling), the list of points, each a dict with
    shape_name, scaling, route, ranks, threads, data_parallel, dims, oversubscribed."""
    ncores, table = cores(), shapes(a.hmdb_batch)
    Ps = [1 << k for k in range(a.max_ranks.bit_length()) if 1 << k <= a.max_ranks]
    groups = []
    for name in a.shapes:
        B, T, I, H, L = table[name]
        for scaling in a.scaling:
            T_strong = a.T or (min(T, QUICK_T) if a.quick else T)
            T0 = a.T0 or max(1, T // Ps[-1])
            points = []

            def add(route, P, threads, D, T_pt):
                points.append(dict(shape_name=name, scaling=scaling, route=route, ranks=P,
                                   threads=threads, data_parallel=D, dims=[B, T_pt, I, H, L],
                                   oversubscribed=P * threads > ncores))

            for P in Ps:
                T_pt = T_strong if scaling == "strong" else T0 * P
                if "serial" in a.routes:
                    if scaling == "weak" and P > 1:
                        add("serial", 1, 1, 1, T_pt)          # the reference at this T
                    if P <= ncores:                            # no more threads than cores
                        add("serial", 1, P, 1, T_pt)
                for route in ("mgrit-paper", "mgrit-fast", "deer", "quasi-deer"):
                    if route in a.routes:
                        add(route, P, 1, 1, T_pt)
                if "data-time" in a.routes:
                    for D in range(2, min(P, B) + 1):       # every group needs batch rows
                        if P % D == 0:
                            add(a.data_solver if P // D > 1 else "serial", P, 1, D, T_pt)
            groups.append(points)
    return groups


def _key(pt):
    """The identity of a point (planned, ``point`` line or ``launch`` line)."""
    dims = pt.get("dims") or pt["shape"]
    return (pt["shape_name"], pt["scaling"], pt["route"], pt["ranks"], pt["threads"],
            pt["data_parallel"], dims[1])


def _job(pt, a):
    repeats = 0 if pt["oversubscribed"] else a.repeats
    args = ["--dims", ",".join(map(str, pt["dims"])), "--solver", pt["route"],
            "--threads", str(pt["threads"]), "--data-parallel", str(pt["data_parallel"]),
            "--repeats", str(repeats)]
    return dict(key=_key(pt), ranks=pt["ranks"], args=args,
                label=dict(shape_name=pt["shape_name"], scaling=pt["scaling"], route=pt["route"]),
                where=dict(ranks=pt["ranks"], threads=pt["threads"],
                           data_parallel=pt["data_parallel"], oversubscribed=pt["oversubscribed"]),
                fail=dict(dims=pt["dims"]))


def _point(pt, recs, a):
    """The ``kind: "point"`` record of ``pt`` from its launches' lines (medians over rounds)."""
    over = pt["oversubscribed"]
    last = recs[-1] if recs else None

    def med(k):
        return None if over or not recs else statistics.median(r[k] for r in recs)
    return dict(kind="point", shape=pt["dims"], shape_name=pt["shape_name"], scaling=pt["scaling"],
                route=pt["route"], ranks=pt["ranks"], threads=pt["threads"],
                data_parallel=pt["data_parallel"], seconds=med("step_s"),
                step_evals=last and last["evals_per_rank"], wait=med("wait_s"),
                phases=last and last["phases"], first_call=med("first_call_s"),
                oversubscribed=over, repeats=0 if over else a.repeats)


BUSY = 0.2     #: cpu_busy_before above which a timing is marked (other processes held the CPUs)


def _table(points, launches):
    """Markdown table of the points of one (shape, scaling); ``launches``: key -> launch lines."""
    ref = {p["shape"][1]: p["seconds"] for p in points
           if p["route"] == "serial" and p["ranks"] == 1 and p["threads"] == 1}
    p0 = points[0]
    B, _, I, H, L = p0["shape"]
    print(f"\n{p0['shape_name']} (B, I, H, L) = ({B}, {I}, {H}, {L}), {p0['scaling']} scaling "
          f"(—: oversubscribed, counting only; *: other processes kept the CPUs more than "
          f"{BUSY:.0%} busy just before the launch)\n")
    print("| route | P x t | T | step time | speedup vs serial 1x1 | evals/rank (fwd + adj) | wait |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for p in points:
        pt = f"{p['ranks']} x {p['threads']}" + (f" ({p['data_parallel']} data x "
                                                 f"{p['ranks'] // p['data_parallel']} time)"
                                                 if p["data_parallel"] > 1 else "")
        T, s, lines = p["shape"][1], p["seconds"], launches.get(_key(p), [])
        if p["step_evals"] is None:
            reason = next((ln["reason"] for ln in lines if ln["status"] == "failed"), "no result")
            print(f"| {p['route']} | {pt} | {T} | failed: {reason.replace('|', '/')} | | | |")
            continue
        ok = [ln["cpu_busy_before"] for ln in lines if ln["status"] == "ok"]
        mark = "*" if ok and statistics.median(ok) > BUSY else ""
        evals = max(f + b for f, b in p["step_evals"])
        sp = ref.get(T) / s if s and ref.get(T) else None
        dash = "—" if p["oversubscribed"] else "-"
        print(f"| {p['route']} | {pt} | {T} | {dash if s is None else bench_regimes._secs(s) + mark} | "
              f"{dash if sp is None else f'{sp:.2f}x'} | {evals} | "
              f"{dash if p['wait'] is None else bench_regimes._secs(p['wait'])} |")


def _tables(points, launches):
    """One table per (shape, scaling), in the order of ``points``."""
    groups = {}
    for p in points:
        groups.setdefault((p["shape_name"], p["scaling"]), []).append(p)
    for rows in groups.values():
        _table(rows, launches)


def tables_of(path):
    """Print the command and tables of every run in the JSON-lines file ``path``."""
    runs = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] == "run":
                runs.append((rec, [], {}))
            elif rec["kind"] == "point":
                runs[-1][1].append(rec)
            elif rec["kind"] == "launch":
                runs[-1][2].setdefault(_key(rec), []).append(rec)
    for run, points, launches in runs:
        m, args = run["machine"], run["args"]
        bench_regimes.print_command(run["command"], f"{args['rounds']} round(s) x {args['repeats']} "
                                    f"repeat(s); {m['cores_usable']} cores; load average at the "
                                    f"start {m['loadavg'][0]:.1f}; medians over rounds", m)
        _tables(points, launches)


def bench(a):
    groups = plan(a)
    if a.dry_run:
        for points in groups:
            for pt in points:
                print(json.dumps(dict(kind="planned", **pt)))
        return
    command = bench_regimes.run_line(a)
    results, failed = bench_regimes.run_rounds([[_job(pt, a) for pt in points] for points in groups],
                                               a.rounds, a.timeout, a.out, "launch", __file__)
    points, launches = [], dict(results)
    for pt in (pt for group in groups for pt in group):
        row = _point(pt, results.get(_key(pt), []), a)
        harness.emit(row, a.out)
        points.append(row)
        if _key(pt) in failed:
            launches.setdefault(_key(pt), []).append(dict(status="failed", reason=failed[_key(pt)][1]))
    bench_regimes.print_command(command, f"{a.rounds} round(s) x {a.repeats} repeat(s); "
                                f"{cores()} cores; medians over rounds")
    _tables(points, launches)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(run under mpiexec by the driver)")
    w.add_argument("--dims", type=lambda s: tuple(int(x) for x in s.split(",")), required=True,
                   help="B,T,I,H,L")
    w.add_argument("--solver", choices=["serial", "mgrit-paper", "mgrit-fast", "deer", "quasi-deer"],
                   required=True)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--data-parallel", type=int, default=1)
    w.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", type=bench_regimes._list(SHAPE_NAMES), default=list(SHAPE_NAMES),
                   help=f"comma-separated, of {', '.join(SHAPE_NAMES)} (default all)")
    p.add_argument("--scaling", type=bench_regimes._list(["strong", "weak"]),
                   default=["strong", "weak"], help="strong, weak or both (default)")
    p.add_argument("--routes", type=bench_regimes._list(ROUTES), default=list(ROUTES),
                   help=f"comma-separated, of {', '.join(ROUTES)} (default all)")
    p.add_argument("--data-solver", choices=["mgrit-paper", "mgrit-fast", "deer", "quasi-deer"],
                   default="mgrit-fast", help="time solver of data x time with P / D > 1 time ranks")
    p.add_argument("--max-ranks", type=int, default=cores(),
                   help="largest P (powers of 2 up to it; default the cores); points above the "
                        "cores only count step evaluations")
    p.add_argument("--T", type=int, default=None, help="strong scaling: override every shape's T")
    p.add_argument("--T0", type=int, default=None,
                   help="weak scaling: T = T0 * P (default the shape's T / the largest P)")
    p.add_argument("--hmdb-batch", type=int, default=8, help="B of the hmdb shape (default 8)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per launch (default 3)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per launch (default 1800)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--quick", action="store_true",
                   help=f"end-to-end check: R2, T {QUICK_T} (weak: T0 128), 1 repeat, P up to 4")
    p.add_argument("--dry-run", action="store_true", help="print the planned launches only")
    p.add_argument("--table", metavar="FILE.jsonl", help="only print the tables of a results file")
    a = p.parse_args()
    if a.cmd == "worker":
        worker(a)
        return
    if a.table:
        tables_of(a.table)
        return
    if a.quick:
        a.shapes, a.T0, a.repeats, a.max_ranks = ["R2"], 128, 1, 4
    if a.rounds < 1 or a.repeats < 0 or a.max_ranks < 1:
        p.error("--rounds and --max-ranks must be at least 1 and --repeats at least 0")
    bench(a)


if __name__ == "__main__":
    main()
