"""Issue 26 item 1: the layer-parallel talk's robustness table on Peaks, reproduced.

2 widths (channels) x {nested, not nested} x 4 settings (Tikhonov 1e-5 / 1e-7 x initial layer
weights 0.0 / 1e-6) x seeds; depth 32, final time 1, SmoothReLU (the authors' Peaks
configuration). Every run is ``mgritnn train --model odenet --data peaks ...`` (its exact
command line is written to ``OUT/commands.txt``), run in this one process one after the other
(``mgritnn.cli.main``) so that numba compiles once, not 192 times; each run's console lines go
to ``OUT/runs/<name>.txt`` and its epoch records to ``OUT/runs/<name>.jsonl``. A run whose log
already has its last epoch is skipped, so the script can be restarted.

The table: mean, median, max, min and standard deviation of the validation (= test set of
peaks.npz, 200 points) accuracy of the last epoch over the 4 x seeds runs of each column, beside
the talk's. Then "accuracy against work": the mean validation accuracy against work units
(one work unit = one epoch of the depth-32 network: forward + adjoint over all training
samples; an epoch of a depth-d level costs d / 32 of it).

Usage (from the repository root)::

    python perf/peaks_robustness.py --out perf/results/robustness-2026-12-07      # run + table
    python perf/peaks_robustness.py --out DIR --summary-only                       # table only
    python perf/peaks_robustness.py --out DIR --seeds 1 --widths 8 --settings 1 --epochs 2 \\
        --nested-epochs 1,1 --fine-epochs 1                                        # tiny check
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

#: The talk's table (Peaks validation accuracy, %, 48 runs per column).
TALK = {
    (5, True): dict(mean=86.7, median=88.0, max=97.0, min=66.0, std=7.69),
    (5, False): dict(mean=85.0, median=88.5, max=95.0, min=20.0, std=11.7),
    (8, True): dict(mean=92.3, median=94.0, max=99.0, min=72.5, std=5.18),
    (8, False): dict(mean=90.7, median=91.8, max=96.5, min=57.0, std=6.08),
}
STATS = ("mean", "median", "max", "min", "std")
#: (tikhonov, initial layer weight scale) of the talk's four settings.
SETTINGS = ((1e-5, 0.0), (1e-5, 1e-6), (1e-7, 0.0), (1e-7, 1e-6))
DEPTH = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--data", default="peaks", help="--data of mgritnn train")
    p.add_argument("--seeds", type=int, default=12, help="seeds 0 .. seeds-1")
    p.add_argument("--widths", default="5,8", help="channels (--width), comma-separated")
    p.add_argument("--settings", type=int, default=4,
                   help="use the first n of the 4 (tikhonov, init scale) settings")
    p.add_argument("--epochs", type=int, default=100, help="epochs of a run without nesting")
    p.add_argument("--nested-epochs", default="40,20",
                   help="epochs of the depth-8 and depth-16 levels of a nested run")
    p.add_argument("--fine-epochs", type=int, default=80,
                   help="epochs of a nested run's depth-32 level")
    p.add_argument("--optim", default="--optimizer adam --lr 0.02 --batch-size 100",
                   help="optimizer flags of every run")
    p.add_argument("--nested-flags", default="",
                   help="more flags of the nested runs only (e.g. --nested-interp linear)")
    p.add_argument("--summary-only", action="store_true", help="only read the logs")
    return p.parse_args(argv)


def runs(args):
    """(name, width, nested, tikhonov, scale, seed, argv) of every run, in the order run."""
    common = (f"--model odenet --data {args.data} --depth {DEPTH} --final-time 1 "
              f"--activation smoothrelu --dtype float64 --threads 1 --quiet {args.optim}").split()
    out = []
    for seed in range(args.seeds):
        for width in (int(w) for w in args.widths.split(",")):
            for tik, scale in SETTINGS[:args.settings]:
                for nested in (False, True):
                    name = (f"w{width}_{'nested' if nested else 'plain'}_tik{tik:g}_"
                            f"init{scale:g}_s{seed}")
                    argv = common + ["--width", str(width), "--tikhonov", f"{tik:g}",
                                     "--layer-init-scale", f"{scale:g}", "--seed", str(seed)]
                    if nested:
                        argv += ["--nested-levels", "2", "--nested-cf", "2",
                                 "--nested-epochs", args.nested_epochs,
                                 "--epochs", str(args.fine_epochs)] + args.nested_flags.split()
                    else:
                        argv += ["--epochs", str(args.epochs)]
                    out.append((name, width, nested, tik, scale, seed, argv))
    return out


def total_epochs(args, nested):
    return (sum(int(e) for e in args.nested_epochs.split(",")) + args.fine_epochs
            if nested else args.epochs)


def read_log(path):
    """The epoch records of a JSON-lines log ([] when absent); those of an L-BFGS run (its
    console file names optimizer=lbfgs) marked ``full_batch``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        recs = [r for r in map(json.loads, filter(str.strip, f)) if r.get("type") == "epoch"]
    txt = path[:-len(".jsonl")] + ".txt"
    if os.path.exists(txt):
        with open(txt) as f:
            if "optimizer=lbfgs" in f.read():
                for r in recs:
                    r["full_batch"] = True
    return recs


def finished(args, name, nested):
    """The epoch records of a finished run, else None: its log reached its last epoch, or (an
    L-BFGS run that converged early) its console file says it ended with status 0."""
    rdir = os.path.join(args.out, "runs")
    recs = read_log(os.path.join(rdir, name + ".jsonl"))
    if recs and recs[-1]["epoch"] == total_epochs(args, nested):
        return recs
    txt = os.path.join(rdir, name + ".txt")
    if recs and os.path.exists(txt):
        with open(txt) as f:
            if "\nstatus 0," in f.read():
                return recs
    return None


def run_all(args):
    from mgritnn.cli import main
    rdir = os.path.join(args.out, "runs")
    os.makedirs(rdir, exist_ok=True)
    todo = runs(args)
    with open(os.path.join(args.out, "commands.txt"), "w") as f:
        for name, *_, argv in todo:
            f.write(f"mgritnn train {' '.join(argv)} --log runs/{name}.jsonl\n")
    t0 = time.perf_counter()
    for i, (name, width, nested, *_, argv) in enumerate(todo):
        log = os.path.join(rdir, name + ".jsonl")
        if finished(args, name, nested):
            continue
        if os.path.exists(log):
            os.remove(log)
        buf = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            status = main(["train"] + argv + ["--log", log])
        with open(os.path.join(rdir, name + ".txt"), "w") as f:
            f.write(f"$ mgritnn train {' '.join(argv)} --log {log}\n{buf.getvalue()}"
                    f"status {status}, {time.perf_counter() - t:.1f} s\n")
        print(f"[{i + 1}/{len(todo)}] {name}: status {status}, {time.perf_counter() - t:.1f} s "
              f"(total {time.perf_counter() - t0:.0f} s)", flush=True)


def work_units(recs):
    """Cumulative work units after each epoch record: an epoch at depth d costs d / 32; an
    L-BFGS iteration (``optimizer`` "lbfgs" in the record's run, whose "batches" are full-batch
    gradients, one or more per iteration for the line search) costs batches x d / 32."""
    w, out = 0.0, []
    for r in recs:
        w += r.get("depth", DEPTH) / DEPTH * (r.get("batches", 1) if r.get("full_batch") else 1)
        out.append(w)
    return out


def stats(values):
    return dict(mean=statistics.fmean(values), median=statistics.median(values),
                max=max(values), min=min(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(args):
    """{(width, nested): [final test accuracy in %, ...]} and {(width, nested): [records...]}."""
    final, curves, missing = {}, {}, []
    for name, width, nested, *_ in runs(args):
        recs = finished(args, name, nested)
        if not recs:
            missing.append(name)
            continue
        final.setdefault((width, nested), []).append(100 * recs[-1]["test_acc"])
        curves.setdefault((width, nested), []).append(recs)
    return final, curves, missing


def robustness_table(final):
    """Markdown: the measured statistics of each column beside the talk's."""
    cols = [(w, n) for w in sorted({w for w, _ in final}) for n in (True, False)
            if (w, n) in final]
    head = "| | " + " | ".join(f"{w} ch., {'nested' if n else 'not nested'} (here / talk)"
                                for w, n in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    st = {c: stats(final[c]) for c in cols}
    for s in STATS:
        cells = []
        for c in cols:
            talk = TALK.get(c, {}).get(s)
            cells.append(f"{st[c][s]:.1f} % / " + (f"{talk:g} %" if talk is not None else "—"))
        lines.append(f"| {'std. dev.' if s == 'std' else s} | " + " | ".join(cells) + " |")
    lines.append("| runs | " + " | ".join(f"{len(final[c])} / 48" for c in cols) + " |")
    return "\n".join(lines)


def work_table(curves, points=(5, 10, 15, 20, 30, 40, 60, 80, 100)):
    """Markdown: mean (and min) validation accuracy reached by a given number of work units."""
    cols = [(w, n) for w in sorted({w for w, _ in curves}) for n in (True, False)]
    cols = [c for c in cols if c in curves]
    lines = ["| work units | " + " | ".join(f"{w} ch., {'nested' if n else 'not nested'}"
                                            for w, n in cols) + " |",
             "|---:|" + "---:|" * len(cols)]
    for p in points:
        cells = []
        for c in cols:
            accs = []
            for recs in curves[c]:
                wu = work_units(recs)
                idx = [i for i, x in enumerate(wu) if x <= p + 1e-9]
                if not idx or wu[-1] < p - 1e-9:
                    break
                accs.append(100 * recs[idx[-1]]["test_acc"])
            cells.append(f"{statistics.fmean(accs):.1f} % (min {min(accs):.1f})"
                         if len(accs) == len(curves[c]) else "—")
        if any(x != "—" for x in cells):
            lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    cells = [f"{statistics.fmean(100 * r[-1]['test_acc'] for r in curves[c]):.1f} % at "
             f"{statistics.fmean(work_units(r)[-1] for r in curves[c]):.1f}" for c in cols]
    lines.append("| end (mean work units) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves, path, title):
    """Mean validation accuracy against work units, one line per column (matplotlib only)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for (w, n), runs_ in sorted(curves.items()):
        wu = work_units(runs_[0])
        acc = [statistics.fmean(100 * r[i]["test_acc"] for r in runs_) for i in range(len(wu))]
        ax.plot(wu, acc, "-" if n else "--", label=f"{w} ch., {'nested' if n else 'not nested'}")
    ax.set_xlabel("work units (depth-32 epochs)")
    ax.set_ylabel("mean validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def summary(args):
    final, curves, missing = collect(args)
    parts = [f"# Peaks robustness ({len(sum(final.values(), []))} runs finished"
             + (f", {len(missing)} missing" if missing else "") + ")", "",
             "Validation accuracy at the last epoch (here / the talk):", "",
             robustness_table(final) if final else "(no finished runs)", "",
             "Mean (min) validation accuracy against work units (one work unit = one depth-32 "
             "epoch):", "", work_table(curves) if curves else "(no finished runs)", ""]
    text = "\n".join(parts)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    if curves and plot(curves, os.path.join(args.out, "work_units.png"),
                       "Peaks: validation accuracy against work"):
        text += "\n(plot: work_units.png)\n"
    print(text)
    return final, curves, missing


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.summary_only:
        run_all(args)
    summary(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
