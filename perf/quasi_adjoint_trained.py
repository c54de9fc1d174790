import sys, time, json
import numpy as np
from bench_quasi_adjoint import checkpoint_problem
from mgritnn.solvers import DEERConfig
for e in (1, 2, 3):
    path = f"/tmp/qadj_ck/emb_ep{e}.npz"
    m, X, y, kw = checkpoint_problem(path, 8)
    l0, g0, _ = m.loss_and_grad_flat(X, y, **kw)
    for cap in (1024 + 2,):
        cfg = DEERConfig(quasi=True, max_iter=cap, fallback=False)
        t = time.perf_counter()
        l1, g1, info = m.loss_and_grad_flat(X, y, cfg, strict=False, **kw)
        f, a = info["forward"], info["adjoint"]
        cos = float(g1 @ g0 / np.linalg.norm(g1) / np.linalg.norm(g0))
        rec = dict(checkpoint=f"emb_ep{e} (T=1024, seq_len-1024 training)", fwd_iters=f.iterations, fwd_status=f.status,
                   adj_iters=a.iterations, adj_status=a.status, cos=cos,
                   rel=float(np.abs(g1 - g0).max() / np.abs(g0).max()), wall=time.perf_counter() - t,
                   adj_hist=[float(h) for h in a.history[-5:]])
        print(json.dumps(rec), flush=True)
        with open("perf/results/quasi-adjoint-trained-2026-12-07.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
