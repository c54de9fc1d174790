"""The plan as text (``mgritnn plan``): a Markdown table of every route and a recommendation."""
from .ops import parse_shape


def _accuracy(route, p):
    """What a route's gradient is, in words."""
    if route == "serial":
        return "exact (serial BPTT)"
    if route.startswith("mgrit"):
        return ("exact (one level: the serial sweep)" if p is not None and p.exact else
                "approximate: fixed MGRIT cycle counts, the gradient is not serial BPTT's")
    return "exact to the Newton tolerance (if it converges in the assumed iterations)"


def format_plan(shape, rows, threads):
    """The plan as text: a Markdown table and a recommendation."""
    shape = parse_shape(shape)
    serial = next((r.prediction.seconds for r in rows if r.route == "serial" and r.ranks == 1
                   and r.prediction is not None), None)
    lines = [f"predicted time per training step, shape (B, T, I, H, L) = {tuple(shape)}, "
             f"{threads} thread(s) per rank", "",
             "| route | ranks (data x time) | s per step | vs serial | step evals per rank "
             "(fwd + adj, max) | gradient |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        p = r.prediction
        where = f"{r.ranks} ({r.data_parallel} x {r.ranks // r.data_parallel})"
        if p is None:
            lines.append(f"| {r.label} | {where} | n/a | | | {r.why} |")
            continue
        speed = f"{serial / p.seconds:.2f}x" if serial and p.seconds > 0 else ""
        evals = max(f + b for f, b in p.step_evals)
        lines.append(f"| {r.label} | {where} | {p.seconds:.4g} | {speed} | {evals} | "
                     f"{_accuracy(r.route, p)} |")
    ok = [r for r in rows if r.prediction is not None]
    if ok:
        best = min(ok, key=lambda r: r.prediction.seconds)
        p = best.prediction
        lines += ["", f"recommendation: {best.label} on {best.ranks} rank(s): "
                      f"{p.seconds:.4g} s per step"
                  + (f", {serial / p.seconds:.2f}x serial" if serial else "")
                  + f"; gradient: {_accuracy(best.route, p)}"]
        if best.route.startswith("mgrit") and not p.exact:
            lines.append("  MGRIT's fixed cycle counts trade accuracy for time: the model does "
                         "not predict that error; compare the loss and the gradient with serial's "
                         "(perf/bench_regimes.py) before relying on it.")
        for note in dict.fromkeys(n for r in ok for n in r.prediction.notes
                                  if not n.startswith("MGRIT with")):
            lines.append(f"  note: {note}")
    lines.append("  (a model: calibrated kernel costs along the critical path; the head, the "
                 "loss and Python between kernels are not modelled)")
    return "\n".join(lines)


__all__ = ["format_plan"]
