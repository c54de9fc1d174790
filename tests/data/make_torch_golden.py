"""Write tests/data/torch_golden.npz: PyTorch's outputs for fixed GRU classifier problems.

The test ``tests/test_torch_parity.py`` compares mgritnn against these values in every CI run,
without PyTorch installed. Run this script (needs ``torch`` and ``numpy`` only, not mgritnn) to
remake the file after changing the cases::

    python tests/data/make_torch_golden.py            # writes tests/data/torch_golden.npz

Every case is a stacked ``torch.nn.GRU`` (batch_first) followed by ``torch.nn.Linear`` on the top
layer's last hidden state, with the mean cross-entropy loss. Weights, inputs and labels are drawn
here with NumPy (seeded), so the file holds everything the test needs: for case ``c``,
``c/X`` (B, T, I), ``c/y`` (B,), ``c/param/<name>`` (PyTorch names), and PyTorch's
``c/logits`` (B, C), ``c/loss`` (), ``c/grad/<name>``. Optimizer cases ``opt<k>`` hold a parameter
vector, a sequence of gradients and the parameters ``torch.optim`` reaches after each step.
"""
import json
import os
import tempfile

import numpy as np
import torch

#: name -> (B, T, I, H, C, num_layers, dtype)
MODEL_CASES = {
    "l1": (5, 12, 4, 7, 3, 1, "float64"),
    "l2": (5, 12, 4, 7, 3, 2, "float64"),
    "l3_b1_long": (1, 60, 3, 5, 4, 3, "float64"),
    "l2_f32": (8, 20, 6, 16, 5, 2, "float32"),
}

#: (optimizer name, keyword arguments of torch.optim / mgritnn's make_optimizer)
OPT_CASES = [
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=3e-3, weight_decay=1e-2)),
    ("sgd", dict(lr=1e-2, momentum=0.9)),
    ("sgd", dict(lr=5e-2, momentum=0.5, weight_decay=1e-3)),
]


def _model_case(name, B, T, I, H, C, L, dtype, rng):
    tdtype = getattr(torch, dtype)
    gru = torch.nn.GRU(I, H, num_layers=L, batch_first=True).to(tdtype)
    head = torch.nn.Linear(H, C).to(tdtype)
    named = list(gru.named_parameters()) + [("head.weight", head.weight), ("head.bias", head.bias)]
    out = {}
    bound = 1.0 / np.sqrt(H)
    with torch.no_grad():
        for pname, p in named:
            value = rng.uniform(-bound, bound, tuple(p.shape)).astype(dtype)
            p.copy_(torch.from_numpy(value))
            out[f"{name}/param/{pname}"] = value
    X = rng.normal(size=(B, T, I)).astype(dtype)
    y = rng.integers(0, C, size=B).astype(np.int64)
    seq, _ = gru(torch.from_numpy(X))
    logits = head(seq[:, -1])
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    out[f"{name}/X"], out[f"{name}/y"] = X, y
    out[f"{name}/logits"] = logits.detach().numpy()
    out[f"{name}/loss"] = np.asarray(loss.item(), dtype)
    for pname, p in named:
        out[f"{name}/grad/{pname}"] = p.grad.numpy().copy()
    return out


def _opt_case(k, opt_name, kw, rng, n=13, steps=6):
    params = rng.normal(size=n)
    grads = rng.normal(size=(steps, n))
    tp = torch.nn.Parameter(torch.tensor(params.copy()))
    topt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[opt_name]([tp], **kw)
    traj = []
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
        traj.append(tp.detach().numpy().copy())
    return {f"opt{k}/params": params, f"opt{k}/grads": grads, f"opt{k}/trajectory": np.array(traj)}


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_golden.npz")):
    torch.manual_seed(0)
    rng = np.random.default_rng(20261203)
    arrays = {}
    for name, shape in MODEL_CASES.items():
        arrays.update(_model_case(name, *shape, rng))
    for k, (opt_name, kw) in enumerate(OPT_CASES):
        arrays.update(_opt_case(k, opt_name, kw, rng))
    meta = dict(torch=torch.__version__, numpy=np.__version__, models=MODEL_CASES,
                optimizers=OPT_CASES, script="tests/data/make_torch_golden.py")
    arrays["meta"] = np.asarray(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, torch {torch.__version__})")


if __name__ == "__main__":
    main()
