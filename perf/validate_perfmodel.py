"""The performance model against every measured point.

Reads the ``kind="point"`` JSON lines of ``perf/bench_scaling.py`` and prints, per point, the
predicted and measured time per training step and the relative error (predicted / measured - 1),
the predicted and measured step evaluations per rank (they must agree exactly: the model counts
what the solvers do), then how many timed points lie within ``--target`` (default 20 %).
Oversubscribed points (more ranks x threads than cores) were measured for counting only: their
step evaluations are compared, their times are not.

Commands (from the repository root)::

    PYTHONPATH=. python perf/validate_perfmodel.py perf/results/scaling-2026-12-03.jsonl
    PYTHONPATH=. python perf/validate_perfmodel.py FILE --out perf/results/validation-$(date +%F).jsonl
"""
import argparse
import json

from mgritnn.plan import validate


def _evals(e):
    return "—" if e is None else " ".join(f"{a}/{b}" for a, b in e)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="JSON lines of perf/bench_scaling.py")
    p.add_argument("--target", type=float, default=0.20)
    p.add_argument("--out", help="write the per-point comparison as JSON lines")
    a = p.parse_args(argv)
    records = []
    for path in a.files:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    rows = validate(records)
    print("| shape | route | P x t | data | predicted | measured | error | evals/rank predicted | measured |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    timed, within, counts_ok = 0, 0, 0
    for r in rows:
        shape = ",".join(map(str, r["shape"]))
        meas = "—" if r["measured"] is None or r["oversubscribed"] else f"{r['measured'] * 1e3:.1f} ms"
        err = ""
        if r["rel_error"] is not None and not r["oversubscribed"]:
            timed += 1
            within += abs(r["rel_error"]) <= a.target
            err = f"{100 * r['rel_error']:+.0f} %"
        same = r["measured_step_evals"] is not None and \
            [list(e) for e in r["measured_step_evals"]] == [list(e) for e in r["predicted_step_evals"]]
        counts_ok += same
        print(f"| {shape} | {r['route']} | {r['ranks']} x {r['threads']} | {r['data_parallel']} | "
              f"{r['predicted'] * 1e3:.1f} ms | {meas} | {err} | {_evals(r['predicted_step_evals'])} | "
              f"{_evals(r['measured_step_evals'])}{'' if same else ' (differs)'} |")
    print(f"\n{within} of {timed} timed points within {100 * a.target:.0f} %; step evaluations equal "
          f"on {counts_ok} of {len(rows)} points")
    if a.out:
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
