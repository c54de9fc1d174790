"""DEER benchmark: serial, DEER, quasi-DEER and MGRIT on one process, against PyTorch, over the
DEER paper's grid (Lim et al., ICLR 2024, the GRU timing figure).

Grid: batch B = 16, one GRU layer (``cell="classic"``) with input size = hidden size = nh in
{1, 4, 16, 32}, T in {1000, 10000, 100000} steps, float32; a :class:`GRUClassifier` with 2 classes
and the default initialization (seed 0); X standard normal and labels 0/1 (seed 0).

For every (nh, T) this measures, side by side in one process (calls interleaved round by round,
:func:`harness.timeit_many`, a short sleep before each call, the median of ``--repeats``):

* forward: ``model.forward(X, solver)`` (the logits), and
* forward + gradient: ``model.loss_and_grad_flat(X, y, solver)``,

for the solvers

* ``serial``: the sequential sweep and BPTT (the reference of every error and speedup);
* ``deer``: ``DEERConfig()`` (Newton with the dense Jacobian; float32 tolerances atol 1e-4,
  rtol 1e-3; at most 50 iterations, then the serial fallback);
* ``quasi-deer``: ``DEERConfig(quasi=True)`` (the diagonal of the Jacobian in the iteration; the
  gradient still uses the full Jacobian at the converged trajectory);
* ``mgrit``: ``MGRITConfig(levels=3, cf=4, max_iter=2, adjoint_max_iter=1)`` on this one process. On one
  process MGRIT only adds work to the serial sweep (its parallelism is across MPI ranks): this row
  shows its overhead and its error after 2/1 cycles. The multi-rank MGRIT timing is
  ``perf/bench_mgrit.py``;
* ``auto``: ``AutoConfig()``: its first call (timed apart) measures serial, DEER and quasi-DEER
  on a prefix of at most 4096 steps and keeps the fastest (serial unless a parallel route is
  faster by 10 %); the timed calls run the chosen route (its name is in the forward statistics'
  message).

and PyTorch's sequential ``torch.nn.GRU(batch_first=True)`` + ``nn.Linear`` on the last state with
the same weights and thread count: the forward under ``no_grad`` and forward + ``cross_entropy``
+ ``backward`` (no optimizer step), when PyTorch imports (``--no-torch`` skips it).

Per solver the record holds: both timings (``median_s``, ``min_s``, all repeats; ``first_call_s``
is the very first call, made and timed before the interleaved rounds, so that a slow or failing
piece is found before it is repeated: numba compilation or cache load plus first touch, and
``compile_s`` = first call - median; there is no extra warm-up call), the speedups ``serial /
solver`` (the median of the per-round ratios, forward and forward + gradient), the Newton
iterations (DEER: summed over the layers, here one) or MGRIT cycles (forward and adjoint), status,
message and whether the serial fallback ran, and the errors against the serial solver: the max
abs error of the logits (of the forward and of the gradient call) and of the top layer's final
state h_T (forward), the loss's abs error, and of the gradient ``grad_max_rel_err`` =
max |g - g_serial| / max |g_serial| (relative to the largest entry, as entries near 0 make an
entrywise ratio meaningless), ``grad_norm_rel_err`` = ||g - g_serial|| / ||g_serial|| and the
cosine. The forward probe calls the same steps as ``model.forward`` (time-major copy, solver
forward with ``keep=False``, head) so that it also sees the forward's :class:`SolveStats` and
final state; the timed calls are ``model.forward`` itself.

Guards (a skipped piece is recorded with its reason, the run goes on)
--------------------------------------------------------------------
* Memory: dense DEER holds a Jacobian of T B nh^2 floats (each Newton iteration frees the last
  one before it makes the next), e.g. 6.6 GB at nh = 32, T = 100000. Each
  (solver, forward or forward + gradient) is skipped when its estimated peak plus what stays
  resident (X; for the solvers after the serial one also its work arrays, 14P, kept for its timed
  calls) exceeds ``--max-gb`` (default 4; ``--plan`` prints these estimates for a grid). The
  estimates are peaks above the resident set measured on this machine (``VmHWM``, float32,
  B = 16, fitted over nh and T), in float32 words with P = T B nh and Q = T B nh^2:
  serial 5P / 15P (forward / forward + gradient), DEER 12P + Q / 16P + Q, quasi-DEER 20P /
  max(20P, 16P + Q), MGRIT 20P / 36P, PyTorch 7P + 300 T / 14P + 4200 T (its autograd graph costs
  about 17 kB per step), plus 10 %.
* Time: a piece whose first call took more than ``--max-seconds`` (default 120) is not timed
  further (its errors and iterations are still recorded), and a piece whose time at the previous T
  of the same nh, scaled linearly in T, exceeds ``--max-seconds`` is not run at all. The forward +
  gradient is skipped when the forward alone was. The serial solver is exempt from the time
  guards (it is the reference of the errors and the speedups); only the memory guard applies.

Output: one JSON line for the run (``kind: "run"``: machine, git state, grid, solver options), one
per (nh, T) (``kind: "deer"``: everything above), a readable row per (nh, T, solver) as it goes,
and a Markdown table at the end. Ratios are only meaningful within one (nh, T): the machine is
shared, check ``cpu_busy_before`` (the script warns above 20 %).

Examples
--------
``PYTHONPATH=. python perf/bench_deer.py --quick``
``PYTHONPATH=. python perf/bench_deer.py --plan``  (memory estimates of the grid, nothing runs)
``PYTHONPATH=. python perf/bench_deer.py --nh 4,16 --T 10000 --repeats 3``
``PYTHONPATH=. python perf/bench_deer.py --out perf/results/deer-$(date +%F).jsonl``  (full grid)
``PYTHONPATH=. python perf/bench_deer.py --table perf/results/deer-<date>.jsonl``
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

import mgritnn
from mgritnn.solvers import DEERConfig, MGRITConfig

try:  # run as ``python perf/bench_deer.py`` (perf/ on sys.path) or as ``python -m perf.bench_deer``
    import harness
except ImportError:  # pragma: no cover
    from perf import harness

#: Batch size of the DEER paper's GRU benchmark.
BATCH = 16
#: Classes of the classifier head.
NUM_CLASSES = 2
DTYPE = "float32"
SOLVERS = ("serial", "deer", "quasi-deer", "mgrit", "auto")
MGRIT_OPTIONS = dict(levels=3, cf=4, max_iter=2, adjoint_max_iter=1)
MODES = ("fwd", "grad")
#: Estimated peak memory above the resident set, in float32 words, per (solver, mode), as
#: (words per P = T B nh, words per Q = T B nh^2, words per step T); quasi-DEER's gradient is the
#: larger of two such terms (module docstring).
MEMORY_MODEL = {
    ("serial", "fwd"): [(5, 0, 0)], ("serial", "grad"): [(15, 0, 0)],
    ("deer", "fwd"): [(12, 1, 0)], ("deer", "grad"): [(16, 1, 0)],
    ("quasi-deer", "fwd"): [(20, 0, 0)], ("quasi-deer", "grad"): [(20, 0, 0), (16, 1, 0)],
    ("mgrit", "fwd"): [(20, 0, 0)], ("mgrit", "grad"): [(36, 0, 0)],
    ("auto", "fwd"): [(12, 1, 0)], ("auto", "grad"): [(16, 1, 0)],       # as DEER (conservative)
    ("torch", "fwd"): [(7, 0, 300)], ("torch", "grad"): [(14, 0, 4200)],
}
MEMORY_MARGIN = 1.1


def memory_estimate(solver, mode, T, B, nh, itemsize=4):
    """Estimated peak bytes of one call above the resident set (see :data:`MEMORY_MODEL`)."""
    P, Q = T * B * nh, T * B * nh * nh
    words = max(a * P + b * Q + c * T for a, b, c in MEMORY_MODEL[(solver, mode)])
    return MEMORY_MARGIN * itemsize * words


def resident_estimate(solver, T, B, nh, itemsize=4):
    """Bytes that stay allocated while ``solver`` runs: X (P words) and, for the solvers after the
    serial one, the serial solver's work arrays (14P words, kept for its timed calls)."""
    P = T * B * nh
    return MEMORY_MARGIN * itemsize * (P + (0 if solver == "serial" else 14 * P))


def memory_need(solver, mode, T, B, nh):
    """Estimated peak bytes of the process while ``solver`` runs ``mode``: :func:`memory_estimate`
    plus :func:`resident_estimate` (the quantity compared with ``--max-gb``)."""
    return memory_estimate(solver, mode, T, B, nh) + resident_estimate(solver, T, B, nh)


def make_problem(nh, T, B=BATCH, seed=0):
    """The model (nh -> nh GRU, 2 classes, default init) and a standard normal batch with labels."""
    model = mgritnn.GRUClassifier(nh, nh, NUM_CLASSES, num_layers=1, cell="classic", dtype=DTYPE,
                                  seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, nh)).astype(DTYPE)
    y = rng.integers(0, NUM_CLASSES, B)
    return model, X, y


def make_solver(name):
    """A solver instance (kept for the whole case, so that its work arrays are reused)."""
    if name == "serial":
        return mgritnn.solvers.get_solver("serial")
    if name == "deer":
        return DEERConfig().make_solver()
    if name == "quasi-deer":
        return DEERConfig(quasi=True).make_solver()
    if name == "mgrit":
        return MGRITConfig(**MGRIT_OPTIONS).make_solver()
    if name == "auto":
        return mgritnn.solvers.AutoConfig().make_solver()
    raise ValueError(name)


def forward_with_stats(model, X, solver):
    """What ``model.forward(X, solver)`` computes, step by step, to also get the solver's forward
    :class:`SolveStats` and the top layer's final state.

    Returns
    -------
    logits (B, C), h_top (B, H) or None, stats or None
    """
    try:
        Xt = model._time_major(X)
        _, h_last, _, stats, _ = model._hidden(Xt, solver, keep=False)
        return model._head(h_last), h_last[-1].copy(), stats
    except AttributeError:       # the model's internals changed: logits only
        return model.forward(X, solver), None, None


def stats_dict(s):
    """A SolveStats as a JSON-able dict (None stays None)."""
    if s is None:
        return None
    return dict(status=s.status, message=s.message, iterations=s.iterations,
                residual=float(s.residual), step_evals=s.step_evals, fallback=bool(s.fallback),
                seconds=s.seconds, history=[float(v) for v in s.history])


def torch_fns(model, X, y, threads):
    """PyTorch's forward (no_grad) and forward + backward with the weights of ``model``.

    Returns
    -------
    fwd, grad : callable
        ``fwd()`` returns the logits (ndarray); ``grad()`` returns (loss, flat gradient laid out
        like ``model.flat``, logits).
    """
    import torch

    torch.set_num_threads(threads)
    H, I = model.hidden_size, model.input_size
    gru = torch.nn.GRU(I, H, 1, batch_first=True)
    head = torch.nn.Linear(H, model.num_classes)
    gru.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.params.items()
                         if "head" not in k})
    head.load_state_dict({"weight": torch.from_numpy(model.params["head.weight"].copy()),
                          "bias": torch.from_numpy(model.params["head.bias"].copy())})
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    named = dict(gru.named_parameters())
    named.update({f"head.{k}": v for k, v in head.named_parameters()})

    def fwd():
        with torch.no_grad():
            out, _ = gru(Xt)
            return head(out[:, -1]).numpy()

    def grad():
        for p in named.values():
            p.grad = None
        out, _ = gru(Xt)
        logits = head(out[:, -1])
        loss = torch.nn.functional.cross_entropy(logits, yt)
        loss.backward()
        flat = np.zeros_like(model.flat)
        views = model.unflatten(flat)
        for k, v in views.items():
            v[...] = named[k].grad.numpy()
        return loss.item(), flat, logits.detach().numpy()

    return fwd, grad


def torch_available():
    """True if PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _errors(ref, logits, h_top=None, loss=None, grad=None):
    """Errors against the serial reference ``ref`` (a dict of its probe results)."""
    e = {}
    if logits is not None and ref.get("logits") is not None:
        d = np.asarray(logits, np.float64) - ref["logits"]
        e["logit_max_abs_err"] = float(np.max(np.abs(d)))
    if h_top is not None and ref.get("h_top") is not None:
        e["h_top_max_abs_err"] = float(np.max(np.abs(h_top.astype(np.float64) - ref["h_top"])))
    if loss is not None and ref.get("loss") is not None:
        e["loss_abs_err"] = abs(float(loss) - ref["loss"])
    if grad is not None and ref.get("grad") is not None:
        g, gs = grad.astype(np.float64), ref["grad"]
        d = g - gs
        e["grad_max_rel_err"] = float(np.max(np.abs(d)) / max(np.max(np.abs(gs)), 1e-300))
        e["grad_norm_rel_err"] = float(np.linalg.norm(d) / max(np.linalg.norm(gs), 1e-300))
        e["grad_cos"] = float(g @ gs / max(np.linalg.norm(g) * np.linalg.norm(gs), 1e-300))
    return e


class _SkipFirstCall:
    """``fn`` whose first call does nothing (it was already made, and timed, by the probe)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        if self.calls > 1:
            self.fn()


def _note(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_case(nh, T, args, history):
    """Benchmark one (nh, T); returns the JSON record. ``history`` maps (solver, nh, mode) to
    (T, seconds) of the last timing, for the time extrapolation guard (updated here)."""
    B = args.batch
    mgritnn.config.set_num_threads(args.threads)
    model, X, y = make_problem(nh, T, B)
    names = list(args.solvers)
    if "serial" not in names:
        names.insert(0, "serial")          # always the reference (probed, timed only if asked)
    use_torch = args.torch
    budget = args.max_gb * 1e9

    rec = dict(kind="deer", nh=nh, T=T, B=B, I=nh, H=nh, L=1, C=NUM_CLASSES, dtype=DTYPE,
               threads=args.threads, repeats=args.repeats, max_gb=args.max_gb,
               max_seconds=args.max_seconds, solvers={})
    load_before = os.getloadavg()
    busy = harness.cpu_busy(1.0)
    rec.update(cpu_busy_before=busy, loadavg_before=load_before)
    if busy is not None and busy > 0.2:
        _note(f"warning: the CPUs were {100 * busy:.0f}% busy before nh={nh} T={T}: other "
              "processes are running, timings will be slow and noisy")

    fns, ref = {}, {}
    entries = []               # (name, solver instance, or (fwd, grad) callables for torch)
    for name in names:
        entries.append((name, make_solver(name)))
    if use_torch:
        tf, tg = torch_fns(model, X, y, args.threads)
        entries.append(("torch", (tf, tg)))

    for name, solver in entries:
        r = rec["solvers"][name] = dict(
            skipped={}, first_call_s={},
            mem_estimate_bytes={m: memory_estimate(name, m, T, B, nh) for m in MODES},
            mem_need_bytes={m: memory_need(name, m, T, B, nh) for m in MODES})
        timed = name != "serial" or "serial" in args.solvers
        for mode in MODES:
            # -- guards before the call
            reason = None
            need = memory_need(name, mode, T, B, nh)
            resident = resident_estimate(name, T, B, nh)
            if need > budget:
                reason = (f"memory: estimated {need / 1e9:.3g} GB (this call "
                          f"{r['mem_estimate_bytes'][mode] / 1e9:.3g} GB + resident "
                          f"{resident / 1e9:.3g} GB) > --max-gb {args.max_gb:g}")
            elif mode == "grad" and r["skipped"].get("fwd", "").startswith("time: estimated"):
                reason = f"time: the forward was skipped ({r['skipped']['fwd']})"
            elif mode == "grad" and r["first_call_s"].get("fwd", 0) > args.max_seconds:
                reason = (f"time: the forward's first call already took "
                          f"{r['first_call_s']['fwd']:.3g} s > --max-seconds {args.max_seconds:g}")
            elif (name, nh, mode) in history:
                T0, s0 = history[(name, nh, mode)]
                est = s0 * T / T0
                if est > args.max_seconds:
                    reason = (f"time: estimated {est:.3g} s (from {s0:.3g} s at T={T0}, linear "
                              f"in T) > --max-seconds {args.max_seconds:g}")
            if reason is not None and name == "serial" and not reason.startswith("memory"):
                reason = None      # the reference runs (and is timed) unless it cannot fit
            if reason is not None:
                r["skipped"][mode] = reason
                _note(f"  nh={nh} T={T} {name} {mode}: skipped: {reason}")
                continue
            # -- the first call: results, statistics, and the time guard
            _note(f"  nh={nh} T={T} {name} {mode}: first call ...")
            t0 = time.perf_counter()
            try:
                if name == "torch":
                    out = solver[0]() if mode == "fwd" else solver[1]()
                elif mode == "fwd":
                    out = forward_with_stats(model, X, solver)
                else:
                    out = model.loss_and_grad_flat(X, y, solver)
            except Exception as exc:  # noqa: BLE001 - record and go on (e.g. DEER's memory check)
                r["skipped"][mode] = f"error: {type(exc).__name__}: {exc}"
                _note(f"  nh={nh} T={T} {name} {mode}: {r['skipped'][mode]}")
                continue
            first = time.perf_counter() - t0
            r["first_call_s"][mode] = first
            _note(f"  nh={nh} T={T} {name} {mode}: first call {first:.2f} s")
            if name == "torch":
                if mode == "fwd":
                    r.update(_errors(ref, out))
                else:
                    loss, g, lg = out
                    e = _errors(ref, lg, loss=loss, grad=g)
                    e["grad_logit_max_abs_err"] = e.pop("logit_max_abs_err", None)
                    r.update(e)
            elif mode == "fwd":
                logits, h_top, st = out
                if name == "serial":
                    ref["logits"] = np.asarray(logits, np.float64)
                    ref["h_top"] = None if h_top is None else h_top.astype(np.float64)
                else:
                    r.update(_errors(ref, logits, h_top))
                r["forward_stats"] = stats_dict(st)
            else:
                loss, g, info = out
                if name == "serial":
                    ref.update(loss=float(loss), grad=g.astype(np.float64))
                    if ref.get("logits") is None:
                        ref["logits"] = np.asarray(info["logits"], np.float64)
                else:
                    e = _errors(ref, info["logits"], loss=loss, grad=g)
                    e["grad_logit_max_abs_err"] = e.pop("logit_max_abs_err", None)
                    r.update(e)
                r["loss"] = float(loss)
                r["grad_forward_stats"] = stats_dict(info["forward"])
                r["grad_adjoint_stats"] = stats_dict(info["adjoint"])
                r["time_forward_s"] = info.get("time_forward")
                r["time_adjoint_s"] = info.get("time_adjoint")
            del out
            if first > args.max_seconds and name != "serial":
                r["skipped"][mode] = (f"time: first call took {first:.3g} s > --max-seconds "
                                      f"{args.max_seconds:g} (results recorded, not timed)")
                _note(f"  nh={nh} T={T} {name} {mode}: {r['skipped'][mode]}")
                history[(name, nh, mode)] = (T, first)
                continue
            if timed:
                if name == "torch":
                    fns[f"{name}/{mode}"] = solver[0] if mode == "fwd" else solver[1]
                elif mode == "fwd":
                    fns[f"{name}/{mode}"] = (lambda s=solver: model.forward(X, s))
                else:
                    fns[f"{name}/{mode}"] = (lambda s=solver: model.loss_and_grad_flat(X, y, s))

    # -- timing: everything that survived, interleaved. The first call above was each function's
    # real first call, so timeit_many's own first call is made a no-op (a slow piece is not run an
    # extra time) and its first_call_s / compile_s are replaced by the first call's.
    if fns:
        _note(f"  nh={nh} T={T}: timing {len(fns)} functions x {args.repeats} repeats ...")
        t = harness.timeit_many({k: _SkipFirstCall(f) for k, f in fns.items()},
                                repeats=args.repeats, warmup=0, pause=args.pause)
    else:
        t = {}
    for key, tr in t.items():
        name, mode = key.split("/")
        r = rec["solvers"][name]
        tr["first_call_s"] = r["first_call_s"][mode]
        tr["compile_s"] = max(0.0, tr["first_call_s"] - tr["median_s"])
        r[mode] = tr
        r[f"{mode}_s"] = tr["median_s"]
        history[(name, nh, mode)] = (T, tr["median_s"])
    for name, r in rec["solvers"].items():
        for mode in MODES:
            ks, kx = f"serial/{mode}", f"{name}/{mode}"
            if ks in t and kx in t:
                r[f"speedup_{mode}"] = statistics.median(
                    a / b for a, b in zip(t[ks]["times_s"], t[kx]["times_s"]))
    rec["loadavg_after"] = os.getloadavg()
    try:
        import numba
        rec["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        rec["numba_threading_layer"] = None
    return rec


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

def _ms(v):
    return "-" if v is None else f"{1e3 * v:.3g}" if v < 1 else f"{1e3 * v:.0f}"


def _x(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _iters(name, r):
    """The iterations cell: Newton iterations (DEER), forward / adjoint cycles (MGRIT)."""
    fs = r.get("forward_stats") or r.get("grad_forward_stats")
    if name in ("serial", "torch") or fs is None:
        return "-"
    if name == "mgrit":
        a = r.get("grad_adjoint_stats")
        s = f"{fs['iterations']} / {a['iterations']}" if a else f"{fs['iterations']}"
    else:
        s = str(fs["iterations"])
    if fs["fallback"]:
        s += " (fallback)"
    elif fs["status"] != 0 and name != "mgrit":
        s += f" (status {fs['status']})"
    return s


def _time_cell(r, mode, unit=""):
    """Median time in ms, or why it is missing (skipped for memory / time, or an error)."""
    if f"{mode}_s" in r:
        return _ms(r[f"{mode}_s"]) + unit
    why = r["skipped"].get(mode, "")
    return f"skipped ({why.split(':')[0]})" if why else "-"


def _logit_err(name, r):
    if name == "serial":
        return "ref"
    v = r.get("logit_max_abs_err", r.get("grad_logit_max_abs_err"))
    return _x(v, "{:.1e}")


def row_text(rec, name):
    """One readable line of a (nh, T, solver)."""
    r = rec["solvers"][name]
    parts = [f"nh={rec['nh']:<3d} T={rec['T']:<7d} {name:<11s}",
             f"fwd {_time_cell(r, 'fwd', ' ms'):>16s}",
             f"fwd+grad {_time_cell(r, 'grad', ' ms'):>16s}",
             f"speedup {_x(r.get('speedup_fwd'))} / {_x(r.get('speedup_grad'))}",
             f"iters {_iters(name, r)}", f"logit err {_logit_err(name, r)}"]
    if "grad_max_rel_err" in r:
        parts.append(f"grad rel err {r['grad_max_rel_err']:.1e}")
    if "h_top_max_abs_err" in r:
        parts.append(f"h_T err {r['h_top_max_abs_err']:.1e}")
    fc = r["first_call_s"]
    if fc:
        parts.append("first call " + " / ".join(f"{fc[m]:.2f}" for m in MODES if m in fc) + " s")
    return "  ".join(parts)


def markdown_table(records):
    """The summary table (Markdown) of the ``kind: "deer"`` records."""
    lines = ["| nh | T | solver | fwd (ms) | fwd+grad (ms) | speedup fwd | speedup fwd+grad "
             "| iterations | max logit error vs serial |",
             "|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for rec in records:
        for name, r in rec["solvers"].items():
            label = "torch nn.GRU" if name == "torch" else name
            lines.append(f"| {rec['nh']} | {rec['T']} | {label} | {_time_cell(r, 'fwd')} "
                         f"| {_time_cell(r, 'grad')} | {_x(r.get('speedup_fwd'))} "
                         f"| {_x(r.get('speedup_grad'))} | {_iters(name, r)} "
                         f"| {_logit_err(name, r)} |")
    return "\n".join(lines)


def plan_table(args):
    """Markdown table of the memory estimates (:func:`memory_need`, GB) of the grid, marking what
    ``--max-gb`` would skip; nothing runs."""
    names = (["serial"] + [s for s in args.solvers if s != "serial"]
             + (["torch"] if args.torch else []))
    lines = [f"memory estimates (GB, peak of the process) against --max-gb {args.max_gb:g}:", "",
             "| nh | T | solver | fwd (GB) | fwd+grad (GB) |", "|---:|---:|---|---:|---:|"]
    for nh in args.nh:
        for T in sorted(args.T):
            for name in names:
                cells = []
                for m in MODES:
                    need = memory_need(name, m, T, args.batch, nh) / 1e9
                    cells.append(f"{need:.3g}" + (" (skip)" if need > args.max_gb else ""))
                lines.append(f"| {nh} | {T} | {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def read_records(path):
    """The ``kind: "deer"`` records of a JSON-lines results file, in file order."""
    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "deer"]


def _ints(s):
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv=None):
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        description="DEER paper grid (B=16, one GRU layer, nh x T, float32): forward and forward + "
                    "gradient of serial, DEER, quasi-DEER and MGRIT (one process) against PyTorch, "
                    "with iterations and errors vs serial. JSON lines on stdout (and in --out), a "
                    "Markdown table at the end.")
    p.add_argument("--nh", type=_ints, default=[1, 4, 16, 32],
                   help="input = hidden sizes, comma-separated (default 1,4,16,32)")
    p.add_argument("--T", type=_ints, default=[1000, 10000, 100000],
                   help="sequence lengths, comma-separated (default 1000,10000,100000)")
    p.add_argument("--solvers", default=",".join(SOLVERS),
                   help=f"comma-separated, out of {', '.join(SOLVERS)} (default: all; the serial "
                        "solver always runs once as the reference of the errors)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per function (default 5)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    p.add_argument("--threads", type=int, default=2, help="numba and torch threads (default 2)")
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="compare with PyTorch (default: if it can be imported)")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="mgritnn only")
    p.add_argument("--max-gb", type=float, default=4.0,
                   help="skip a (solver, forward or forward+gradient) whose estimated memory "
                        "exceeds this many GB (default 4)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="do not time a piece whose first call took longer, and do not run one "
                        "whose time extrapolated from the previous T is longer (default 120)")
    p.add_argument("--pause", type=float, default=0.02,
                   help="seconds of sleep before each timed call (default 0.02)")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: nh 1,4, T 1000, at most 2 repeats (overrides --nh, --T)")
    p.add_argument("--plan", action="store_true",
                   help="only print the memory estimates of the grid and what --max-gb skips")
    p.add_argument("--table", metavar="FILE.jsonl", default=None,
                   help="only print the Markdown table of the records in FILE.jsonl (no run)")
    args = p.parse_args(argv)
    args.solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    bad = [s for s in args.solvers if s not in SOLVERS]
    if bad:
        p.error(f"unknown solver(s) {bad}; choose from {list(SOLVERS)}")
    if args.quick:
        args.nh, args.T, args.repeats = [1, 4], [1000], min(args.repeats, 2)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if min(args.nh) < 1 or min(args.T) < 1 or args.batch < 1:
        p.error("nh, T and the batch must be positive")
    if args.torch is None:
        args.torch = torch_available()
    elif args.torch and not torch_available():
        p.error("--torch given but PyTorch cannot be imported")
    return args


def main(argv=None):
    """Run the benchmark (or with ``--table`` print a results file's table); returns the records."""
    args = parse_args(argv)
    if args.table:
        records = read_records(args.table)
        print(markdown_table(records))
        return records
    if args.plan:
        print(plan_table(args))
        return []
    mgritnn.config.set_num_threads(args.threads)
    if args.torch:
        import torch
        torch.set_num_threads(args.threads)
    else:
        _note("PyTorch not compared (--no-torch, or it cannot be imported)")
    run = dict(kind="run", argv=sys.argv[1:] if argv is None else list(argv),
               date=datetime.datetime.now().isoformat(timespec="seconds"),
               nh=args.nh, T=args.T, B=args.batch, dtype=DTYPE, solvers=args.solvers,
               threads=args.threads, repeats=args.repeats, quick=args.quick, torch=args.torch,
               max_gb=args.max_gb, max_seconds=args.max_seconds,
               solver_options={"deer": repr(DEERConfig()),
                               "quasi-deer": repr(DEERConfig(quasi=True)),
                               "mgrit": repr(MGRITConfig(**MGRIT_OPTIONS))},
               machine=harness.machine_info())
    harness.emit(run, args.out)
    records, history = [], {}
    for nh in args.nh:
        for T in sorted(args.T):
            rec = bench_case(nh, T, args, history)
            for name in rec["solvers"]:
                print(row_text(rec, name), flush=True)
            harness.emit(rec, args.out)
            records.append(rec)
    print()
    print(markdown_table(records))
    return records


if __name__ == "__main__":
    main()
