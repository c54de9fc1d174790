"""Summarize the runs of ``perf/odenet_peaks.sh``: one table row per JSON-lines log in DIR.

Usage: python perf/odenet_summary.py DIR   (prints a Markdown table)
"""
import json
import sys
from pathlib import Path


def summary(path):
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epochs = [r for r in recs if r.get("type") == "epoch"]
    if not epochs:
        return None
    last = epochs[-1]
    # layer steps of the forward sweep per sample, summed over the run (depth per epoch):
    # the budget nested iteration is compared at
    layer_epochs = sum(r["depth"] for r in epochs) / last["depth"]
    train_s = sum(r["seconds"] - r["eval_seconds"] for r in epochs)
    step_s = train_s / sum(r["batches"] for r in epochs)
    evals = last["step_evals_per_rank"]
    best = max(r["test_acc"] for r in epochs)
    # the budget (epochs at the full depth, training seconds) until the training accuracy first reached 90 %
    cost, seconds, to90 = 0.0, 0.0, "not reached"
    for r in epochs:
        cost += r["depth"] / last["depth"]
        seconds += r["seconds"] - r["eval_seconds"]
        if r["train_acc"] >= 0.9:
            to90 = f"{cost:.1f} ({seconds:.1f} s)"
            break
    return (f"| {path.stem} | {last['ranks']} | {len(epochs)} | {layer_epochs:.1f} | "
            f"{100 * last['train_acc']:.2f} | {100 * last['test_acc']:.2f} | {100 * best:.2f} | "
            f"{evals['forward']:.0f} / {evals['adjoint']:.0f} | {1e3 * step_s:.1f} | "
            f"{train_s:.1f} | {to90} |")


def main(folder):
    print("| run | ranks | epochs | full-depth epochs | final train acc % | final val acc % | "
          "best val acc % | step evals per rank fwd / adj (last epoch, per gradient) | "
          "ms per gradient | training s | full-depth epochs (training s) to 90 % train acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in sorted(Path(folder).glob("*.jsonl")):
        row = summary(p)
        if row:
            print(row)


if __name__ == "__main__":
    main(sys.argv[1])
