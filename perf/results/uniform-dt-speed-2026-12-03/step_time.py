import sys, time, json, numpy as np, mgritnn
from mgritnn.solvers import MGRITConfig
B, T, I, H, L = map(int, sys.argv[1].split(","))
rng = np.random.default_rng(0)
m = mgritnn.GRUClassifier(I, H, 6, num_layers=L, cell="implicit", seed=0)
X = rng.normal(size=(B, T, I)).astype(np.float32); y = rng.integers(0, 6, B)
out = {}
for name, spec in [("serial", "serial"), ("mgrit-fast", MGRITConfig.preset("fast"))]:
    t0 = time.perf_counter(); m.loss_and_grad_flat(X, y, spec); first = time.perf_counter() - t0
    ts = []
    for _ in range(5):
        t0 = time.perf_counter(); m.loss_and_grad_flat(X, y, spec); ts.append(time.perf_counter() - t0)
    out[name] = float(np.median(ts))
print(json.dumps(out))
