"""Slow, obviously right NumPy twins of the kernels. Never imports mgritnn's kernels.

Everything here follows the formulas of ``../shared/design/algorithms.md`` §1 literally, one layer
and one time step at a time, with each cell's own update formula (no shared theta trick).
Parameters are dicts with PyTorch names; arrays are time-major inside: x (T, B, I), h (L, B, H).
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def layer_step(cell, x, h, Wx, Wh, bx, bh, dt):
    """One layer, one step. Returns the new state and the intermediates of the VJP."""
    H = h.shape[-1]
    Ax = x @ Wx.T + bx
    Ah = h @ Wh.T + bh
    r = sigmoid(Ax[:, :H] + Ah[:, :H])
    z = sigmoid(Ax[:, H:2 * H] + Ah[:, H:2 * H])
    n = np.tanh(Ax[:, 2 * H:] + r * Ah[:, 2 * H:])
    if cell == "classic":
        if dt == 1.0:
            hnew = (1 - z) * n + z * h
        else:
            hnew = h + dt * (1 - z) * (n - h)
    elif cell == "implicit":
        a = dt * (1 - z)
        hnew = (h + a * n) / (1 + a)
    else:
        raise ValueError(cell)
    return hnew, dict(x=x, h=h, r=r, z=z, n=n, Ahn=Ah[:, 2 * H:], hnew=hnew)


def layer_step_vjp(cell, c, lam, Wx, Wh, dt):
    """VJP of :func:`layer_step` at intermediates ``c`` for the adjoint ``lam`` of the new state.

    Returns (lam_h, dx, dWx, dWh, dbx, dbh).
    """
    r, z, n, h, hnew = c["r"], c["z"], c["n"], c["h"], c["hnew"]
    if cell == "classic":
        dn = lam * dt * (1 - z)
        dz = -lam * dt * (n - h)
        lam_h = lam * (1 - dt * (1 - z))
    else:
        a = dt * (1 - z)
        d = 1 + a
        dn = lam * a / d
        da = lam * (n - hnew) / d
        dz = -dt * da
        lam_h = lam / d
    dpn = dn * (1 - n ** 2)
    dr = dpn * c["Ahn"]
    dpr = dr * r * (1 - r)
    dpz = dz * z * (1 - z)
    dAx = np.concatenate([dpr, dpz, dpn], axis=1)
    dAh = np.concatenate([dpr, dpz, dpn * r], axis=1)
    lam_h = lam_h + dAh @ Wh
    dx = dAx @ Wx
    return lam_h, dx, dAx.T @ c["x"], dAh.T @ h, dAx.sum(0), dAh.sum(0)


def layer_params(p, k):
    return p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]


def stack_step(cell, p, L, x, h, dt):
    """One step of an L-layer stack: x (B, I), h (L, B, H) -> (h' (L, B, H), caches)."""
    out, caches, inp = np.empty_like(h), [], x
    for k in range(L):
        out[k], c = layer_step(cell, inp, h[k], *layer_params(p, k), dt)
        caches.append(c)
        inp = out[k]
    return out, caches


def stack_step_vjp(cell, p, L, caches, lam_next, dt):
    """VJP of :func:`stack_step`: returns (lam (L, B, H), dx (B, I), grads dict)."""
    lam = np.empty_like(lam_next)
    grads, dx = {}, None
    for k in range(L - 1, -1, -1):
        Wx, Wh, _, _ = layer_params(p, k)
        lk = lam_next[k] + (dx if dx is not None else 0)
        lam[k], dx, dWx, dWh, dbx, dbh = layer_step_vjp(cell, caches[k], lk, Wx, Wh, dt)
        grads.update({f"weight_ih_l{k}": dWx, f"weight_hh_l{k}": dWh, f"bias_ih_l{k}": dbx,
                      f"bias_hh_l{k}": dbh})
    return lam, dx, grads


def sequence(cell, p, L, x, h0, dt=1.0):
    """States at all points: x (T, B, I), h0 (L, B, H) -> (hs (T+1, L, B, H), caches per step)."""
    hs = [h0]
    caches = []
    for t in range(x.shape[0]):
        h, c = stack_step(cell, p, L, x[t], hs[-1], dt)
        hs.append(h)
        caches.append(c)
    return np.stack(hs), caches


def loss(cell, p, L, X, y, dt=1.0):
    """Mean softmax cross-entropy of the classifier; X batch-first (B, T, I)."""
    x = np.swapaxes(X, 0, 1)
    B, H = X.shape[0], p["weight_hh_l0"].shape[1]
    hs, _ = sequence(cell, p, L, x, np.zeros((L, B, H), X.dtype), dt)
    logits = hs[-1, -1] @ p["head.weight"].T + p["head.bias"]
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(lse - logits[np.arange(B), y])), logits


def loss_and_grad(cell, p, L, X, y, dt=1.0):
    """Loss and gradients of every parameter by backpropagation through time, one step at a time."""
    x = np.swapaxes(X, 0, 1)
    T, B = x.shape[:2]
    H = p["weight_hh_l0"].shape[1]
    hs, caches = sequence(cell, p, L, x, np.zeros((L, B, H), X.dtype), dt)
    top = hs[-1, -1]
    logits = top @ p["head.weight"].T + p["head.bias"]
    sm = np.exp(logits - logits.max(axis=1, keepdims=True))
    sm /= sm.sum(axis=1, keepdims=True)
    lval, _ = loss(cell, p, L, X, y, dt)
    dlogits = sm.copy()
    dlogits[np.arange(B), y] -= 1
    dlogits /= B
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    grads["head.weight"] = dlogits.T @ top
    grads["head.bias"] = dlogits.sum(0)
    lam = np.zeros((L, B, H), X.dtype)
    lam[-1] = dlogits @ p["head.weight"]
    for t in range(T - 1, -1, -1):
        lam, _, g = stack_step_vjp(cell, p, L, caches[t], lam, dt)
        for k, v in g.items():
            grads[k] += v
    return lval, grads
