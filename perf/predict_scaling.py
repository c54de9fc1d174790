"""How far each route scales, predicted by the performance model.

For the shapes of ``perf/bench_scaling.py`` this asks :func:`mgritnn.plan.predict` for the time
of one training step of every route on P = 1, 2, 4, ..., ``--max-ranks`` ranks (one thread each,
the time axis split over all P ranks; MGRIT also as data x time where the batch allows), and prints:

* per shape, the predicted speedup over the serial sweep on one core for each route and P (blank
  where the route does not fit: fewer steps than a rank needs), and the **crossover**: the
  smallest P at which the route first beats serial;
* speedup against the sequence length T at a fixed P (``--fixed-ranks``, default 32): the paper's
  claim is that MGRIT's speedup grows with T;
* PNG plots of both when matplotlib is installed (``pip install matplotlib``), written to
  ``--plots DIR``; Markdown tables always.

The costs come from this machine's calibration (cached; :func:`mgritnn.plan.load_or_calibrate`),
so the predictions describe a cluster of such cores joined by the model's network costs
(measured by ping-pong when run under MPI, else the assumed shared-memory figures, which a real
network exceeds: the notes say which). Beyond this machine nothing is measured: these are
predictions, validated only on the points ``perf/bench_scaling.py`` measured (``perf/validate_perfmodel.py``).

Commands (from the repository root)::

    PYTHONPATH=. python perf/predict_scaling.py --out perf/results/predict-$(date +%F).jsonl \\
        --plots perf/results/plots
    PYTHONPATH=. python perf/predict_scaling.py --shapes R2 --max-ranks 64       # quick
"""
import argparse
import json
import os

from mgritnn.errors import ConfigError
from mgritnn.plan import predict

try:  # run as ``python perf/predict_scaling.py`` (perf/ on sys.path) or as a module
    from bench_scaling import shapes as scaling_shapes
except ImportError:  # pragma: no cover
    from perf.bench_scaling import shapes as scaling_shapes

ROUTES = ("mgrit-paper", "mgrit-fast", "deer", "quasi-deer")


def _powers(limit):
    p = 1
    while p <= limit:
        yield p
        p *= 2


def _shape(name, hmdb_batch):
    return tuple(scaling_shapes(hmdb_batch)[name])


def speedups(shape, ranks, routes, data_parallel=1):
    """Predicted seconds per step of serial (1 rank) and of each route at each P.

    Returns
    -------
    serial : float
    rows : list of dict
        route, ranks, seconds, speedup, exact, notes.
    """
    serial = predict(shape, "serial").seconds
    rows = []
    for route in routes:
        for P in ranks:
            opts = {"cores": P}          # a cluster: one core per rank, never oversubscribed
            if data_parallel > 1:
                opts["data_parallel"] = data_parallel
            if data_parallel > 1 and (P % data_parallel or route != "mgrit-fast"):
                continue
            try:
                p = predict(shape, route, ranks=P, options=opts)
            except ConfigError:         # the route does not fit (too few steps per rank)
                continue
            rows.append(dict(route=route if data_parallel == 1 else f"{route} ({data_parallel} data)",
                             ranks=P, seconds=p.seconds, speedup=serial / p.seconds,
                             exact=p.exact, notes=p.notes))
    return serial, rows


def crossover(rows, route):
    """The smallest P at which ``route`` beats serial (None: not up to the largest P)."""
    for r in sorted((r for r in rows if r["route"] == route), key=lambda r: r["ranks"]):
        if r["speedup"] > 1:
            return r["ranks"]
    return None


def _plot(path, series, xlabel, title, logx=True):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("predicted speedup over serial (1 core)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="uci_har,R1,R2,hmdb")
    p.add_argument("--hmdb-batch", type=int, default=8)
    p.add_argument("--max-ranks", type=int, default=1024)
    p.add_argument("--fixed-ranks", type=int, default=32)
    p.add_argument("--T-values", default="1024,4096,16384,65536,262144",
                   help="sequence lengths of the speedup-against-T table (the shape's T replaced)")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--out", help="append the predictions as JSON lines")
    p.add_argument("--plots", help="write PNG plots here (needs matplotlib)")
    a = p.parse_args(argv)
    routes = a.routes.split(",")
    ranks = list(_powers(a.max_ranks))
    plots = a.plots
    if plots:
        try:
            import matplotlib  # noqa: F401
            os.makedirs(plots, exist_ok=True)
        except ImportError:
            print("matplotlib is not installed: tables only (pip install matplotlib for plots)")
            plots = None
    out = open(a.out, "a") if a.out else None
    for name in a.shapes.split(","):
        shape = _shape(name, a.hmdb_batch)
        serial, rows = speedups(shape, ranks, routes)
        if shape[0] > 1:
            rows += speedups(shape, [P for P in ranks if P >= 2], ["mgrit-fast"], 2)[1]
        print(f"\n### {name} {shape}: predicted speedup over serial on one core "
              f"({serial * 1e3:.1f} ms per step)\n")
        labels = sorted({r["route"] for r in rows}, key=lambda s: (s.split()[0], s))
        print("| P | " + " | ".join(labels) + " |")
        print("|---:|" + "---:|" * len(labels))
        for P in ranks:
            cells = []
            for lab in labels:
                hit = [r for r in rows if r["route"] == lab and r["ranks"] == P]
                cells.append(f"{hit[0]['speedup']:.2f}x" if hit else "")
            print(f"| {P} | " + " | ".join(cells) + " |")
        print("\ncrossover (first P that beats serial): " + "; ".join(
            f"{lab} {crossover(rows, lab) or f'none up to {ranks[-1]}'}" for lab in labels))
        notes = sorted({n for r in rows for n in r["notes"] if "oversubscribed" not in n})
        if notes:
            print("notes: " + "; ".join(notes))
        T_rows = []
        for T in map(int, a.T_values.split(",")):
            sT = (shape[0], T) + shape[2:]
            ser = predict(sT, "serial").seconds
            for route in routes:
                try:
                    sec = predict(sT, route, ranks=a.fixed_ranks,
                                  options={"cores": a.fixed_ranks}).seconds
                except ConfigError:
                    continue
                T_rows.append(dict(route=route, T=T, speedup=ser / sec))
        print(f"\nspeedup against T at P = {a.fixed_ranks}:\n")
        print("| T | " + " | ".join(routes) + " |")
        print("|---:|" + "---:|" * len(routes))
        for T in map(int, a.T_values.split(",")):
            got = {r["route"]: r["speedup"] for r in T_rows if r["T"] == T}
            print(f"| {T} | " + " | ".join(f"{got[route]:.2f}x" if route in got else "—"
                                           for route in routes) + " |")
        if out:
            for r in rows:
                out.write(json.dumps(dict(kind="predicted", shape_name=name, shape=list(shape),
                                          **r)) + "\n")
            for r in T_rows:
                out.write(json.dumps(dict(kind="predicted_T", shape_name=name,
                                          ranks=a.fixed_ranks, **r)) + "\n")
        if plots:
            _plot(os.path.join(plots, f"speedup-vs-P-{name}.png"),
                  {lab: ([r["ranks"] for r in rows if r["route"] == lab],
                         [r["speedup"] for r in rows if r["route"] == lab]) for lab in labels},
                  "ranks P (one thread each)", f"{name} {shape}: predicted speedup")
            _plot(os.path.join(plots, f"speedup-vs-T-{name}.png"),
                  {route: ([r["T"] for r in T_rows if r["route"] == route],
                           [r["speedup"] for r in T_rows if r["route"] == route])
                   for route in routes},
                  "sequence length T", f"{name}: predicted speedup at P = {a.fixed_ranks}")
    if out:
        out.close()


if __name__ == "__main__":
    main()
