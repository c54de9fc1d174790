"""Slow, obviously right NumPy twins of the kernels. Never imports mgritnn's kernels.

Everything here follows the formulas of ``docs/algorithms.md`` §1 literally, one layer
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
    elif cell == "matched-classic":      # dt unit classic steps, gates frozen: z^dt of the gap
        hnew = n + z ** dt * (h - n)
    elif cell == "matched-implicit":     # dt unit implicit steps: (1 / (2 - z))^dt of the gap
        hnew = n + (1 / (2 - z)) ** dt * (h - n)
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
    elif cell.startswith("matched"):     # hnew = n + q^dt (h - n), q = z or 1 / (2 - z)
        q, dq = (z, 1.0) if cell == "matched-classic" else (1 / (2 - z), 1 / (2 - z) ** 2)
        dn = lam * (1 - q ** dt)
        dz = lam * (h - n) * dt * q ** (dt - 1) * dq
        lam_h = lam * q ** dt
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


# ------------------------------------------------------------------------------------------------
# Linear recurrences (the DEER scan)
# ------------------------------------------------------------------------------------------------

def linear_recurrence(A, b, h0, reverse=False):
    """h_{t+1} = A_t h_t + b_t for t = 0..n-1 from h0 (out[t] = h_{t+1}); in reverse
    mu_t = A_t^T mu_{t+1} + b_t for t = n-1..0 from mu_n = h0 (out[t] = mu_t). A (n, B, H, H) or its
    diagonal (n, B, H); one step at a time."""
    out = np.empty_like(b)
    s = h0.copy()
    for t in (range(len(b) - 1, -1, -1) if reverse else range(len(b))):
        if A.ndim == 3:
            s = A[t] * s + b[t]
        else:
            M = np.swapaxes(A[t], 1, 2) if reverse else A[t]
            s = np.einsum("bij,bj->bi", M, s) + b[t]
        out[t] = s
    return out


# =================================================================================================
# implicit-newton (docs/algorithms.md §1c): backward Euler with the gates at the new state,
#     G(y) = y - h - dt (1 - z(y)) (n(y) - y) = 0,   y = h',
# solved by a plain Newton loop, one batch row at a time. Independent of the kernels and of the
# "2y - Phi_classic" identity the cell uses: G, its Jacobian and the adjoint are written out here.
# Same algorithm as the cell (initial guess the linearly implicit step; per row, stop when
# max|G| <= tol before an update; at most max_iter updates; y -= delta / (1 + damping)).
# =================================================================================================

def newton_gates(x, y, Wx, Wh, bx, bh):
    """Gates at the state y: (r, z, n, A_h^n), each (B, H)."""
    H = y.shape[-1]
    Ax = x @ Wx.T + bx
    Ah = y @ Wh.T + bh
    r = sigmoid(Ax[:, :H] + Ah[:, :H])
    z = sigmoid(Ax[:, H:2 * H] + Ah[:, H:2 * H])
    n = np.tanh(Ax[:, 2 * H:] + r * Ah[:, 2 * H:])
    return r, z, n, Ah[:, 2 * H:]


def newton_residual(x, h, y, Wx, Wh, bx, bh, dt):
    """G(y) = y - h - dt (1 - z(y)) (n(y) - y), (B, H)."""
    _, z, n, _ = newton_gates(x, y, Wx, Wh, bx, bh)
    return y - h - dt * (1 - z) * (n - y)


def newton_jacobian(x, y, Wx, Wh, bx, bh, dt):
    """dG/dy (B, H, H) = I - dt df/dy with f = (1 - z)(n - y), by the chain rule written out:
    dz/dy = z(1-z) W_z, dr/dy = r(1-r) W_r, dn/dy = (1-n^2) (A_h^n dr/dy + r W_n)."""
    H = y.shape[-1]
    r, z, n, Ahn = newton_gates(x, y, Wx, Wh, bx, bh)
    Wr, Wz, Wn = Wh[:H], Wh[H:2 * H], Wh[2 * H:]
    eye = np.eye(H)
    out = np.empty((y.shape[0], H, H))
    for b in range(y.shape[0]):
        dz = (z[b] * (1 - z[b]))[:, None] * Wz
        dr = (r[b] * (1 - r[b]))[:, None] * Wr
        dn = (1 - n[b] ** 2)[:, None] * (Ahn[b][:, None] * dr + r[b][:, None] * Wn)
        df = -(n[b] - y[b])[:, None] * dz + (1 - z[b])[:, None] * (dn - eye)
        out[b] = eye - dt * df
    return out


def newton_layer_step(x, h, Wx, Wh, bx, bh, dt, tol, max_iter=8, damping=0.0):
    """One implicit-newton step of one layer: x (B, I), h (B, H) -> (h' (B, H), cache).

    The cache holds the gates at h', the Newton matrix there, and per row the number of updates
    and the final max|G|."""
    a0 = dt * (1 - newton_gates(x, h, Wx, Wh, bx, bh)[1])
    y = (h + a0 * newton_gates(x, h, Wx, Wh, bx, bh)[2]) / (1 + a0)     # linearly implicit guess
    B = h.shape[0]
    iters, resid = np.zeros(B, int), np.zeros(B)
    for b in range(B):
        for k in range(max_iter + 1):
            g = newton_residual(x[b:b + 1], h[b:b + 1], y[b:b + 1], Wx, Wh, bx, bh, dt)[0]
            resid[b] = np.max(np.abs(g))
            if not resid[b] > tol or k == max_iter:
                break
            J = newton_jacobian(x[b:b + 1], y[b:b + 1], Wx, Wh, bx, bh, dt)[0]
            y[b] = y[b] - np.linalg.solve(J, g) / (1 + damping)
            iters[b] += 1
    r, z, n, Ahn = newton_gates(x, y, Wx, Wh, bx, bh)
    return y, dict(x=x, y=y, r=r, z=z, n=n, Ahn=Ahn, iters=iters, resid=resid,
                   JG=newton_jacobian(x, y, Wx, Wh, bx, bh, dt))


def newton_layer_step_vjp(c, lam, Wx, Wh, dt):
    """VJP by the implicit function theorem: solve JG^T mu = lam per row; the old state's adjoint is
    mu (dG/dh = -I); the parameters' and input's are dt (df/d.)^T mu at (y, x).

    Returns (lam_h, dx, dWx, dWh, dbx, dbh)."""
    r, z, n, y = c["r"], c["z"], c["n"], c["y"]
    mu = np.stack([np.linalg.solve(c["JG"][b].T, lam[b]) for b in range(lam.shape[0])])
    dn = dt * mu * (1 - z)
    dz = -dt * mu * (n - y)
    dpn = dn * (1 - n ** 2)
    dpr = dpn * c["Ahn"] * r * (1 - r)
    dpz = dz * z * (1 - z)
    dAx = np.concatenate([dpr, dpz, dpn], axis=1)
    dAh = np.concatenate([dpr, dpz, dpn * r], axis=1)
    return mu, dAx @ Wx, dAx.T @ c["x"], dAh.T @ y, dAx.sum(0), dAh.sum(0)


def newton_stack_step(p, L, x, h, dt, tol, **kw):
    """One implicit-newton step of an L-layer stack: x (B, I), h (L, B, H) -> (h', caches)."""
    out, caches, inp = np.empty_like(h), [], x
    for k in range(L):
        out[k], c = newton_layer_step(inp, h[k], *layer_params(p, k), dt, tol, **kw)
        caches.append(c)
        inp = out[k]
    return out, caches


def newton_stack_step_vjp(p, L, caches, lam_next, dt):
    """VJP of :func:`newton_stack_step`: returns (lam (L, B, H), dx (B, I), grads dict)."""
    lam = np.empty_like(lam_next)
    grads, dx = {}, None
    for k in range(L - 1, -1, -1):
        Wx, Wh, _, _ = layer_params(p, k)
        lk = lam_next[k] + (dx if dx is not None else 0)
        lam[k], dx, dWx, dWh, dbx, dbh = newton_layer_step_vjp(caches[k], lk, Wx, Wh, dt)
        grads.update({f"weight_ih_l{k}": dWx, f"weight_hh_l{k}": dWh, f"bias_ih_l{k}": dbx,
                      f"bias_hh_l{k}": dbh})
    return lam, dx, grads


def newton_loss_and_grad(p, L, X, y, dt=1.0, tol=1e-10):
    """Loss (mean softmax cross-entropy of the head on the top layer's last state) and every
    parameter's gradient of an implicit-newton classifier, by BPTT with the IFT adjoint; X (B, T, I)."""
    x = np.swapaxes(X, 0, 1)
    T, B = x.shape[:2]
    H = p["weight_hh_l0"].shape[1]
    hs, caches = [np.zeros((L, B, H))], []
    for t in range(T):
        h, c = newton_stack_step(p, L, x[t], hs[-1], dt, tol)
        hs.append(h)
        caches.append(c)
    top = hs[-1][-1]
    logits = top @ p["head.weight"].T + p["head.bias"]
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    lval = float(np.mean(lse - logits[np.arange(B), y]))
    dlogits = np.exp(logits - lse[:, None])
    dlogits[np.arange(B), y] -= 1
    dlogits /= B
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    grads["head.weight"] = dlogits.T @ top
    grads["head.bias"] = dlogits.sum(0)
    lam = np.zeros((L, B, H))
    lam[-1] = dlogits @ p["head.weight"]
    for t in range(T - 1, -1, -1):
        lam, _, g = newton_stack_step_vjp(p, L, caches[t], lam, dt)
        for k, v in g.items():
            grads[k] += v
    return lval, grads, logits


# ------------------------------------------------------------------------------------------------
# ODENet residual layer: u' = u + dt sigma(W u + b), one layer, one sample, one unit at a time
# ------------------------------------------------------------------------------------------------

def odenet_sigma(name, a):
    """sigma(a) and sigma'(a) of one scalar, from the definitions (SmoothReLU: eta = 0.1)."""
    import math
    if name == "tanh":
        t = math.tanh(a)
        return t, 1.0 - t * t
    if name == "relu":
        return max(a, 0.0), (1.0 if a > 0 else 0.0)
    eta = 0.1
    if abs(a) < eta:
        return a * a / (4 * eta) + a / 2 + eta / 4, a / (2 * eta) + 0.5
    return max(a, 0.0), (1.0 if a >= eta else 0.0)


def odenet_step(name, x, u, dt):
    """K states through their layers with plain loops. x (K, w, w + 1) = [W | b], u (K, B, w),
    dt (K,) or (K, B). Returns u_new (K, B, w)."""
    K, B, w = u.shape
    dt = np.broadcast_to(np.asarray(dt, float).reshape(K, -1), (K, B))
    new = np.array(u, dtype=float)
    for k in range(K):
        for b in range(B):
            for i in range(w):
                a = x[k, i, w] + sum(x[k, i, j] * u[k, b, j] for j in range(w))
                new[k, b, i] = u[k, b, i] + dt[k, b] * odenet_sigma(name, a)[0]
    return new


def odenet_step_vjp(name, x, u, dt, lam_next):
    """VJP of :func:`odenet_step` with plain loops: (lam (K, B, w), dx (K, w, w + 1))."""
    K, B, w = u.shape
    dt = np.broadcast_to(np.asarray(dt, float).reshape(K, -1), (K, B))
    lam = np.array(lam_next, dtype=float)
    dx = np.zeros(x.shape)
    for k in range(K):
        for b in range(B):
            for i in range(w):
                a = x[k, i, w] + sum(x[k, i, j] * u[k, b, j] for j in range(w))
                s = dt[k, b] * odenet_sigma(name, a)[1] * lam_next[k, b, i]
                for j in range(w):
                    lam[k, b, j] += x[k, i, j] * s
                    dx[k, i, j] += s * u[k, b, j]
                dx[k, i, w] += s
    return lam, dx
