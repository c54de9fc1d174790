"""The HMDB51 feature shape at P = 32 cores, predicted beside the paper's speedup.

Moon & Cyr (ICLR 2022) train an implicit GRU on ResNet features of HMDB51 videos, (B, T, I, H, L)
= (100, 128, 1000, 1000, 2) here, on Sandia's Attaway (36 cores per node, 4 MPI ranks per node,
9 OpenMP threads per rank) and report up to 6.6x over the serial classic GRU. The issue asks for
the best predicted speedup at P = 32 cores as 4 ranks x 8 threads. This prints the model's time
per training step for the serial sweep (1 core; 1 rank x 8 threads) and the time-parallel routes
on 4 x 8, 4 x 9 and 32 x 1, with the speedups. Threads beyond this machine's cores are
extrapolated from its 1- and 2-thread calibrations (:func:`mgritnn.plan.extrapolate_threads`),
so every figure is a prediction; the first run calibrates (minutes at H = 1000; cached).

Command (from the repository root)::

    PYTHONPATH=. python perf/predict_hmdb51.py [--batch 100] [--out perf/results/hmdb51-predict.md]
"""
import argparse

from mgritnn.errors import ConfigError
from mgritnn.io import atomic_write_text
from mgritnn.plan import predict

#: (route, ranks, threads) to predict; the serial rows are the baselines.
POINTS = [("serial", 1, 1), ("serial", 1, 8), ("serial", 1, 9),
          ("mgrit-paper", 4, 8), ("mgrit-fast", 4, 8), ("quasi-deer", 4, 8),
          ("mgrit-paper", 4, 9), ("mgrit-fast", 4, 9),
          ("mgrit-paper", 32, 1), ("mgrit-fast", 32, 1), ("quasi-deer", 32, 1)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out", help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    shape = (args.batch, 128, 1000, 1000, 2)
    rows, base = [], {}
    for route, P, t in POINTS:
        try:
            pr = predict(shape, route, ranks=P, threads=t, options={"cores": P * t})
        except ConfigError as e:
            print(f"{route} {P} x {t}: does not fit ({e})")
            continue
        if route == "serial":
            base[t] = pr.seconds
        if not pr.seconds < float("inf"):     # a route whose calibration could not run
            print(f"{route} {P} x {t}: does not fit (its dense Jacobians exceed the memory)")
            continue
        rows.append((route, P, t, pr))
    lines = [f"HMDB51 features {shape}, float32, implicit cell, predicted (one core per thread)",
             "", "| route | ranks x threads | cores | step | vs serial 1 core | vs serial 1 x 8 "
             "| exact | notes |", "|---|---|---:|---:|---:|---:|---|---|"]
    for route, P, t, pr in rows:
        notes = "; ".join(n for n in pr.notes if "assumed" not in n or "Newton" in n)
        lines.append(f"| {route} | {P} x {t} | {P * t} | {pr.seconds:.2f} s "
                     f"| {base[1] / pr.seconds:.2f}x | {base[8] / pr.seconds:.2f}x "
                     f"| {'yes' if pr.exact else 'no'} | {notes} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
