"""The cost of parity: step evaluations per rank of MGRIT training runs (their JSON-lines logs),
beside the serial sweep's and the paper preset's, and the performance model's predicted speedup
at P = 8, 32, 128 time ranks for the task's shape with the cycle counts the run needed.

The training preset stops on a tolerance, so its cycle counts vary by batch; the prediction uses
the run's mean forward and adjoint cycles (rounded up) as fixed counts, and the paper preset's
own (2 / 1). Fallbacks cost a serial sweep on top: the measured share of them is added to the
predicted time as that share of a serial step (a pipelined sweep on P ranks is no faster than
one serial sweep).

Command (after ``perf/parity_runs.sh``; ``--predict`` calibrates the model on first use)::

    python perf/parity_cost.py --shape 4,4096,1,32,1 --cell implicit \\
        --train perf/results/parity-2026-12-07/t4096_implicit_train.jsonl \\
        --paper perf/results/parity-2026-12-07/t4096_implicit_paper.jsonl
"""
import argparse
import json
import math

import numpy as np

from mgritnn.plan import load_or_calibrate, parse_shape, predict


def run_stats(path):
    """Over the batches after the first epoch (all of them for a one-epoch run): the mean
    evaluations per rank (forward, adjoint) per batch, mean cycles and the forward fallbacks."""
    recs = [json.loads(line) for line in open(path)]
    batches = [r for r in recs if r["type"] == "batch"]
    bs = [r for r in batches if r["epoch"] > 1] or batches
    ev = np.array([r["step_evals_max_rank"] for r in bs], np.float64)
    return {"after epoch 1": dict(
        batches=len(bs), evals=ev.mean(0).tolist(),
        fwd_cycles=float(np.mean([_field(r, "forward_iterations") for r in bs])),
        adj_cycles=float(np.mean([_field(r, "adjoint_iterations") for r in bs])),
        fwd_fallback=int(sum(_field(r, "forward_fallback") for r in bs)))}


#: The batch records' fields under their old names (logs of mgritnn before the trainer was split into parts).
_OLD_NAMES = dict(forward_iterations="fwd_iters", adjoint_iterations="bwd_iters",
                  forward_fallback="fwd_fallback")


def _field(rec, name):
    """A batch record's field ``name``, also from a log that has it under its old name."""
    return rec[name] if name in rec else rec[_OLD_NAMES[name]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", required=True, help="B,T,I,H,L of the task")
    p.add_argument("--cell", default="implicit")
    p.add_argument("--train", required=True, help="JSON-lines log of the training preset's run")
    p.add_argument("--paper", help="JSON-lines log of the paper preset's run")
    p.add_argument("--ranks", default="8,32,128")
    p.add_argument("--calibration-size", default="default", choices=("tiny", "default"))
    p.add_argument("--predict", action="store_true",
                   help="also the performance model's predictions (calibrates on first use)")
    a = p.parse_args(argv)
    shape = parse_shape(a.shape)
    serial_evals = shape.T                       # forward and adjoint, one rank
    tr = run_stats(a.train)
    rows = [("train preset", tr)]
    if a.paper:
        rows.append(("paper preset", run_stats(a.paper)))
    print(f"shape B,T,I,H,L = {tuple(shape)}, cell {a.cell}; serial: {serial_evals} + "
          f"{serial_evals} evaluations per step")
    print("| run | batches | fwd cycles | adj cycles | evals per rank (fwd + adj) | x serial's "
          "2T | speedup bound, any P |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, st in rows:
        s = st["after epoch 1"]
        ev = sum(s["evals"])
        m = 2 if name.startswith("train") else 16          # fine steps per coarsest step
        bound = 2 * serial_evals / ((s["fwd_cycles"] + s["adj_cycles"]) * serial_evals / m)
        print(f"| {name} (after epoch 1) | {s['batches']} | {s['fwd_cycles']:.2f} | "
              f"{s['adj_cycles']:.2f} | {s['evals'][0]:.0f} + {s['evals'][1]:.0f} | "
              f"{ev / (2 * serial_evals):.2f} | {bound:.2f}x |")
    print("\n(speedup bound: serial's 2T evaluations over the sequential coarsest level's T/m per "
          "cycle, m = 2 for the train preset, 16 for the paper preset: no P does better)")
    if not a.predict:
        return
    costs = (lambda b: load_or_calibrate(a.cell, shape.H, shape.L, "float32", 1, b,
                                         size=a.calibration_size))
    serial = predict(shape, "serial", 1, 1, dict(cell=a.cell), costs).seconds
    fb = tr["after epoch 1"]["fwd_fallback"] / max(tr["after epoch 1"]["batches"], 1)
    kf = math.ceil(tr["after epoch 1"]["fwd_cycles"])
    ka = math.ceil(tr["after epoch 1"]["adj_cycles"])
    print(f"\npredicted speedup over the serial step ({serial * 1e3:.1f} ms predicted), "
          f"train preset at {kf} / {ka} cycles (+{100 * fb:.0f} % of batches falling back), "
          "paper preset at 2 / 1:")
    print("| P | train preset | paper preset |")
    print("|---:|---:|---:|")
    for P in [int(x) for x in a.ranks.split(",")]:
        cells = []
        for cfg, over in (("train", dict(max_iter=kf, adjoint_max_iter=ka)), ("paper", {})):
            try:
                t = predict(shape, "mgrit", P, 1, dict(cell=a.cell, config=cfg, mgrit=over,
                                                       warm=cfg == "train", cores=P),
                            costs).seconds
                if cfg == "train":
                    t += fb * serial
                cells.append(f"{serial / t:.2f}x")
            except Exception as e:          # a hierarchy that does not fit P
                cells.append(f"n/a ({type(e).__name__})")
        print(f"| {P} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
