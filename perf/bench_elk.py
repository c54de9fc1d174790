"""ELK against DEER on trained weights: iterations to tolerance and the largest Lyapunov exponent.

Question (issue 25, item 1): on the weights of a trained GRU, undamped DEER's first Newton step is
non-finite and quasi-DEER needs ~100 iterations; do ELK and quasi-ELK (the trust-region /
Levenberg-Marquardt step, ``DEERConfig(trust_region=True)``) converge, to DEER's tolerance, within
50 iterations where those do not?

Two parts:

* ``--train DIR``: serial training runs with a checkpoint copy after every epoch,
  ``DIR/<name>_ep<k>.npz`` (the embedded default task at ``--seq-len`` and WatchExercise from
  ``../shared/data`` when it exists), each with ``mgritnn train`` (hidden 32, lr 3e-3, batch 8,
  classic cell, float32), plus ``<name>_ep0.npz``: the untrained weights (the checkpoint of epoch 1
  with the parameters of a fresh model of seed 0).
* measurement (the checkpoints given, or all of ``DIR``): on the first ``--batch`` test sequences
  (standardized as in training, their true lengths), for DEER, quasi-DEER, ELK and quasi-ELK
  (``fallback=False``, the float32 default tolerances atol 1e-4, rtol 1e-3, ``--max-iter``;
  dense ELK ``--elk-max-iter``):
  status, Newton iterations, forward seconds and the largest error against the serial
  trajectory's last state; and the largest Lyapunov exponent of the recurrence along the serial
  trajectory: the mean over steps of log |J_t v_{t-1}| with v renormalized every step (one
  vector: the top exponent), J_t the step's dense Jacobian, the mean and the largest over the
  batch rows (per step; padded steps, whose Jacobian is I, are left out).

Prints a table and writes one JSON line per (checkpoint, solver) to ``--out``.

    python perf/bench_elk.py --train /tmp/elk --seq-len 2048 --epochs 4
    python perf/bench_elk.py /tmp/elk/*.npz --out perf/results/elk.jsonl
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

import mgritnn
from mgritnn import datasets
from mgritnn.solvers import DEERConfig
from mgritnn.train import load_checkpoint

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "watch_exercise.npz")
ROUTES = {"deer": dict(), "quasi-deer": dict(quasi=True), "elk": dict(trust_region=True),
          "quasi-elk": dict(quasi=True, trust_region=True)}


def train(folder, seq_len, epochs, watch_epochs):
    """The training runs (module docstring); returns the checkpoint paths."""
    os.makedirs(folder, exist_ok=True)
    runs = [("emb", ["--data", "default", "--seq-len", str(seq_len)], epochs)]
    if os.path.exists(DATA):
        runs.append(("watch", ["--data", os.path.abspath(DATA)], watch_epochs))
    else:
        print(f"WatchExercise skipped: {DATA} does not exist", file=sys.stderr)
    out = []
    for name, data, n in runs:
        ck = os.path.join(folder, f"{name}.npz")
        for e in range(1, n + 1):
            cmd = ["mgritnn", "train", *data, "--hidden", "32", "--lr", "3e-3", "--batch-size", "8",
                   "--epochs", str(e), "--checkpoint", ck, "--resume" if e > 1 else "--overwrite"]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            path = os.path.join(folder, f"{name}_ep{e}.npz")
            with open(ck, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
            out.append(path)
            if e == 1:
                out.append(_untrained(path))
    return out


def _untrained(path):
    """``path`` with the parameters of a fresh model of seed 0 (same shapes): epoch 0."""
    model, _, _ = load_checkpoint(path)
    fresh = mgritnn.GRUClassifier(model.input_size, model.hidden_size, model.num_classes,
                                  num_layers=model.num_layers, cell="classic", dtype=model.dtype,
                                  seed=0)
    z = dict(np.load(path, allow_pickle=False))
    for k, v in fresh.params.items():
        z[k] = v
    dest = path.replace("_ep1.npz", "_ep0.npz")
    np.savez(dest, **z)
    return dest


def batch_of(path, n):
    """(model, X (n, T, C) standardized, y, lengths or None, pad) of the checkpoint's test set."""
    model, std, meta = load_checkpoint(path)
    cfg = meta.get("train", {})
    ds = datasets.load(cfg.get("data", "default"), seq_len=cfg.get("seq_len"), seed=cfg.get("seed", 0),
                       num_classes=cfg.get("num_classes"), model_classes=model.num_classes,
                       lengths=cfg.get("lengths", "use"), pad=cfg.get("pad", "end"))
    lengths = getattr(ds, "len_test", None)
    lengths = None if lengths is None else np.asarray(lengths[:n])
    pad = cfg.get("pad", "end")
    X = std.transform(ds.X_test[:n], model.dtype, lengths, pad)
    return model, X, ds.y_test[:n], lengths, pad


def lyapunov(model, X, lengths, pad):
    """Largest Lyapunov exponent per batch row along the serial trajectory (module docstring)."""
    from mgritnn.cells import project
    from mgritnn.solvers.base import step_sizes
    cell, w = model.cell, model.weights()
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    T, B = Xt.shape[:2]
    ax0 = project(Xt, w.Wx[0], w.bx[0])
    dtv = step_sizes(model.step_sizes(lengths, T, B, pad), T, w.dtype, 0, T)
    h0 = np.zeros((model.num_layers, B, model.hidden_size), w.dtype)
    hs = cell.sequence_forward(w, ax0, h0, dtv, keep=False).hs[0]
    J = cell.layer_step(w, 0, ax0, np.ascontiguousarray(hs[:-1]), dtv, jacobian="dense",
                        fused=True).J.astype(np.float64)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((B, model.hidden_size))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    total, steps = np.zeros(B), np.zeros(B)
    live = np.asarray(dtv).reshape(T, -1) != 0
    live = np.broadcast_to(live, (T, B))
    for t in range(T):
        u = np.einsum("bij,bj->bi", J[t], v)
        g = np.linalg.norm(u, axis=1)
        total += np.where(live[t], np.log(g), 0.0)
        steps += live[t]
        v = u / g[:, None]
    return total / np.maximum(steps, 1)


def measure(path, n, max_iter, elk_max_iter, routes=tuple(ROUTES)):
    model, X, y, lengths, pad = batch_of(path, n)
    kw = {} if lengths is None else dict(lengths=lengths, pad=pad)
    exact = model.forward(X, **kw)
    lyap = lyapunov(model, X, lengths, pad)
    rows = []
    for name, opts in ROUTES.items():
        if name not in routes:
            continue
        cap = elk_max_iter if name == "elk" else max_iter
        cfg = DEERConfig(fallback=False, max_iter=cap, **opts)
        t0 = time.perf_counter()
        _, _, info = model.loss_and_grad_flat(X, y, cfg, strict=False, **kw)
        wall = time.perf_counter() - t0
        f = info["forward"]
        err = float(np.abs(info["logits"] - exact).max()) if f.status == 0 else float("nan")
        rows.append(dict(checkpoint=os.path.basename(path), solver=name, status=int(f.status),
                         iterations=int(f.iterations), forward_s=f.seconds, wall_s=wall,
                         logit_err=err, lyap_mean=float(lyap.mean()), lyap_max=float(lyap.max()),
                         T=int(X.shape[1]), batch=int(X.shape[0]), message=f.message))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="*")
    p.add_argument("--train", metavar="DIR", help="train first, into DIR")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--watch-epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--elk-max-iter", type=int, default=50,
                   help="the cap of dense ELK (its iterations are the slow ones here)")
    p.add_argument("--routes", default=",".join(ROUTES), help="which of " + ", ".join(ROUTES))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    paths = list(a.checkpoints)
    if a.train:
        paths += train(a.train, a.seq_len, a.epochs, a.watch_epochs)
    paths = sorted(dict.fromkeys(p for x in paths for p in (glob.glob(x) or [x])))
    routes = a.routes.split(",")
    print(f"{'checkpoint':22s} {'lyap mean':>9s} {'max':>7s} | " +
          " | ".join(f"{r:>18s}" for r in routes))
    for path in paths:
        rows = measure(path, a.batch, a.max_iter, a.elk_max_iter, routes)
        if a.out:
            with open(a.out, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        cells = [f"{('ok' if r['status'] == 0 else 'st%d' % r['status']):>4s} "
                 f"{r['iterations']:4d} {r['forward_s']:7.2f}s" for r in rows]
        print(f"{os.path.basename(path):22s} {rows[0]['lyap_mean']:9.4f} {rows[0]['lyap_max']:7.4f} | "
              + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
