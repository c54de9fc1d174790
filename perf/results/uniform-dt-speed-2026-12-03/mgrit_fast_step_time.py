import sys, time, json, numpy as np, mgritnn
from mgritnn.solvers import MGRITConfig
B, T, I, H, L = map(int, sys.argv[1].split(","))
rng = np.random.default_rng(0)
m = mgritnn.GRUClassifier(I, H, 6, num_layers=L, cell="implicit", seed=0)
X = rng.normal(size=(B, T, I)).astype(np.float32); y = rng.integers(0, 6, B)
spec = MGRITConfig.preset("fast")
m.loss_and_grad_flat(X, y, spec)
ts = []
for _ in range(9):
    t0 = time.perf_counter(); m.loss_and_grad_flat(X, y, spec); ts.append(time.perf_counter() - t0)
print(json.dumps({"mgrit-fast": float(np.median(ts)), "min": float(min(ts))}))
