"""Issue 26 item 3: SGD with momentum, serial against layer-parallel MGRIT (2 and 4 ranks).

For every set (Peaks, Indian Pines, digits dense, digits convolutional) this trains the same
network with the same seed and epochs by ``--optimizer sgd --momentum 0.9``: serially
(backpropagation, one process) and with ``--solver mgrit --preset layers`` under
``mpiexec -n P`` (``--threads 1``), one run after the other. Each run's command and console
lines go to ``OUT/<set>_<run>.txt``, its epoch records to ``OUT/<set>_<run>.jsonl``; then a table
of the final test accuracy and its difference to serial (``OUT/summary.md``).
``--cycles K[,K2..]`` adds runs with K MGRIT cycles each way (``--max-iter K --adjoint-max-iter K``)
for the sets and rank counts given by ``--cycles-ranks``. A run whose log already holds its last
epoch is not run again.

Usage (from the repository root; MPIEXEC and PYTHON may be set)::

    python perf/sgd_parity.py --out perf/results/sgd-parity-2026-12-07
    python perf/sgd_parity.py --out DIR --sets digits_conv --ranks 2 --cycles 3
    python perf/sgd_parity.py --out DIR --summary-only
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

DATA = os.environ.get("SHARED_DATA", "../shared/data")
#: name -> (flags of the network and its data, SGD learning rate, batch size, epochs); sized for
#: a 2-core machine shared with other jobs (Indian Pines: 20 batches of 100 per epoch).
SETS = {
    "peaks": ("--data peaks --width 8 --depth 32 --final-time 1 --activation smoothrelu "
              "--dtype float64", 0.05, 100, 15),
    "pines": (f"--data {DATA}/indian_pines.npz --width 220 --depth 29 --final-time 20 "
              "--activation tanh --dtype float64 --max-batches 20", 0.001, 100, 4),
    "digits_dense": (f"--data {DATA}/digits.npz --width 32 --depth 16 --final-time 4 "
                     "--activation tanh --dtype float64", 0.05, 50, 15),
    "digits_conv": (f"--data {DATA}/digits.npz --layer conv --channels 8 --depth 8 "
                    "--final-time 4 --activation tanh --dtype float32", 0.05, 50, 5),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated, of " + ", ".join(SETS))
    p.add_argument("--ranks", default="1,2,4", help="1 = serial; P > 1: MGRIT on P ranks")
    p.add_argument("--cycles", default=None,
                   help="also run MGRIT with this many cycles each way (comma-separated: each)")
    p.add_argument("--cycles-ranks", default="2,4")
    p.add_argument("--epochs", type=int, default=None, help="override every set's epochs")
    p.add_argument("--lr", type=float, default=None, help="override every set's learning rate")
    p.add_argument("--max-batches", type=int, default=None, help="quick runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--summary-only", action="store_true")
    return p.parse_args(argv)


def plan(args):
    """(set, run name, ranks, argv of ``mgritnn train`` without --log, epochs) of every run."""
    out = []
    for s in args.sets.split(","):
        flags, lr, batch, epochs = SETS[s]
        epochs = args.epochs or epochs
        base = (f"--model odenet {flags} --optimizer sgd --momentum 0.9 "
                f"--lr {args.lr or lr:g} --batch-size {batch} --epochs {epochs} "
                f"--seed {args.seed} --threads 1 --quiet").split()
        if args.max_batches:
            if "--max-batches" in base:         # the set's own (Indian Pines) replaced
                i = base.index("--max-batches")
                del base[i:i + 2]
            base += ["--max-batches", str(args.max_batches)]
        for P in (int(r) for r in args.ranks.split(",")):
            if P == 1:
                out.append((s, "serial", 1, base, epochs))
            else:
                out.append((s, f"mgrit{P}", P, base + "--solver mgrit --preset layers".split(),
                            epochs))
        for k in (str(int(c)) for c in (args.cycles or "").split(",") if c):
            for P in (int(r) for r in args.cycles_ranks.split(",")):
                out.append((s, f"mgrit{P}_c{k}", P, base + ["--solver", "mgrit", "--preset",
                                                            "layers", "--max-iter", k,
                                                            "--adjoint-max-iter", k], epochs))
    return out


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if r.get("type") == "epoch"]


def run_all(args):
    py = os.environ.get("PYTHON", sys.executable)
    mpiexec = os.environ.get("MPIEXEC", os.path.join(os.path.dirname(py), "mpiexec"))
    for s, name, P, argv, epochs in plan(args):
        base = os.path.join(args.out, f"{s}_{name}")
        if (recs := read_log(base + ".jsonl")) and recs[-1]["epoch"] == epochs:
            continue
        if os.path.exists(base + ".jsonl"):
            os.remove(base + ".jsonl")
        launch = [py, "-m", "mgritnn"] if P == 1 else [mpiexec, "-n", str(P), py, "-m", "mgritnn"]
        cmd = launch + ["train"] + argv + ["--log", base + ".jsonl"]
        t = time.perf_counter()
        with open(base + ".txt", "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            f.write(f"status {rc}, wall {time.perf_counter() - t:.1f} s\n")
        print(f"{s} {name}: status {rc}, {time.perf_counter() - t:.1f} s", flush=True)


def summary(args):
    rows = ["| set | run | epochs | final test acc. | vs serial (points) | best test acc. | "
            "step evals per rank (fwd / adj) | s per epoch |",
            "|---|---|---:|---:|---:|---:|---|---:|"]
    serial = {}
    for s, name, P, argv, epochs in plan(args):
        recs = read_log(os.path.join(args.out, f"{s}_{name}.jsonl"))
        if not recs and "_c" in name:       # the extra-cycle runs exist only where run
            continue
        if not recs:
            rows.append(f"| {s} | {name} | — | (no log) | | | | |")
            continue
        acc = 100 * recs[-1]["test_acc"]
        if name == "serial":
            serial[s] = acc
        diff = f"{acc - serial[s]:+.2f}" if s in serial and name != "serial" else ""
        ev = [r.get("step_evals_per_rank", {}) for r in recs]
        fwd = statistics.fmean(e.get("forward", float("nan")) for e in ev)
        adj = statistics.fmean(e.get("adjoint", float("nan")) for e in ev)
        sec = statistics.fmean(r["seconds"] for r in recs)
        done = "" if recs[-1]["epoch"] == epochs else f" (of {epochs})"
        rows.append(f"| {s} | {name} | {recs[-1]['epoch']}{done} | {acc:.2f} % | {diff} | "
                    f"{100 * max(r['test_acc'] for r in recs):.2f} % | {fwd:.0f} / {adj:.0f} | "
                    f"{sec:.2f} |")
    text = "\n".join(rows) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.summary_only:
        run_all(args)
    summary(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
