"""Time one serial training step and one MGRIT (fast preset, one process) gradient of the
mgritnn importable from PYTHONPATH: median of --repeats calls after a warm-up call, one line of
JSON. Run it alternately against two checkouts to compare kernels side by side::

    for r in 1 2 3; do for d in /tmp/base .; do PYTHONPATH=$d python perf/ab_step.py --tag $d; done; done
"""
import argparse
import json
import time

import numpy as np

import mgritnn
from mgritnn import MGRITConfig
from mgritnn.runtime import blas_threads, numba_threads

SHAPES = {"uci_har": (100, 128, 9, 100, 2), "long": (16, 4096, 6, 32, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tag", default="")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    out = dict(tag=a.tag, threads=a.threads, src=mgritnn.__file__)
    with blas_threads(1), numba_threads(a.threads):
        for name, (B, T, I, H, L) in SHAPES.items():
            rng = np.random.default_rng(0)
            m = mgritnn.GRUClassifier(I, H, 6, num_layers=L, cell="implicit", dtype="float32")
            X = rng.normal(size=(B, T, I)).astype(np.float32)
            y = rng.integers(0, 6, B)
            for route, solver in (("serial", "serial"), ("mgrit-fast", MGRITConfig.preset("fast"))):
                ts = []
                for k in range(a.repeats + 1):
                    t0 = time.perf_counter()
                    m.loss_and_grad_flat(X, y, solver, strict=False)
                    ts.append(time.perf_counter() - t0)
                out[f"{name}/{route}_ms"] = round(1e3 * float(np.median(ts[1:])), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
