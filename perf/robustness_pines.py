"""Issue 26 item 1, second part: validation accuracy against work units on Indian Pines, nested
iteration (depth 8 -> 16 -> 32) against the depth-32 network trained from the start, at an equal
budget of work units (one work unit = one epoch of the depth-32 network; an epoch at depth d
costs d / 32). Network: the project's Indian Pines ODENet (docs/results.md: width 220, final time
20, tanh, Adam lr 1e-3, batch 100) with depth 32 instead of 29 (divisible by 4 for two
refinements). Same layout, restart rule and tables as ``perf/peaks_robustness.py``.

Usage (from the repository root)::

    python perf/robustness_pines.py --out perf/results/robustness-2026-12-07/pines
"""
import argparse
import contextlib
import importlib.util
import io
import os
import sys
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "peaks_robustness", Path(__file__).resolve().parent / "peaks_robustness.py")
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="../shared/data/indian_pines.npz")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--width", type=int, default=220)
    p.add_argument("--epochs", type=int, default=12, help="epochs without nesting")
    p.add_argument("--nested-epochs", default="8,4", help="depth-8 and depth-16 epochs")
    p.add_argument("--fine-epochs", type=int, default=8, help="depth-32 epochs of a nested run")
    p.add_argument("--optim", default="--optimizer adam --lr 0.001 --batch-size 100")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--summary-only", action="store_true")
    return p.parse_args(argv)


def runs(args):
    common = (f"--model odenet --data {args.data} --width {args.width} --depth 32 "
              f"--final-time 20 --activation tanh --dtype float64 --threads 1 --quiet "
              f"{args.optim}").split()
    if args.max_batches:
        common += ["--max-batches", str(args.max_batches)]
    out = []
    for seed in range(args.seeds):
        for nested in (False, True):
            argv = common + ["--seed", str(seed)]
            argv += (["--nested-levels", "2", "--nested-cf", "2", "--nested-epochs",
                      args.nested_epochs, "--epochs", str(args.fine_epochs)] if nested
                     else ["--epochs", str(args.epochs)])
            out.append((f"pines_{'nested' if nested else 'plain'}_s{seed}", args.width, nested,
                        seed, argv))
    return out


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from mgritnn.cli import main as cli
    curves = {}
    for name, width, nested, seed, argv in runs(args):
        log = os.path.join(args.out, name + ".jsonl")
        epochs = pr.total_epochs(args, nested)
        recs = pr.read_log(log)
        if not args.summary_only and not (recs and recs[-1]["epoch"] == epochs):
            if os.path.exists(log):
                os.remove(log)
            buf, t = io.StringIO(), time.perf_counter()
            with contextlib.redirect_stdout(buf):
                status = cli(["train"] + argv + ["--log", log])
            with open(os.path.join(args.out, name + ".txt"), "w") as f:
                f.write(f"$ mgritnn train {' '.join(argv)} --log {log}\n{buf.getvalue()}"
                        f"status {status}, {time.perf_counter() - t:.1f} s\n")
            print(f"{name}: status {status}, {time.perf_counter() - t:.1f} s", flush=True)
            recs = pr.read_log(log)
        if recs and recs[-1]["epoch"] == epochs:
            curves.setdefault((width, nested), []).append(recs)
    top = max(pr.total_epochs(args, False), args.fine_epochs)
    text = ("Indian Pines: mean (min) validation accuracy against work units (one work unit = "
            "one depth-32 epoch):\n\n" + pr.work_table(curves, points=range(1, top + 1)) + "\n")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    if curves and pr.plot(curves, os.path.join(args.out, "work_units.png"),
                          "Indian Pines: validation accuracy against work"):
        text += "\n(plot: work_units.png)\n"
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
