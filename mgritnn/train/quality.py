"""The quality of a run's gradients, per epoch: scaled adjoints brought back to their range,
solves that fell back to the serial sweep or stalled, gradient checks against the exact
gradient (:mod:`mgritnn.gradient_quality`), and an implicit-newton cell's row solves."""
import contextlib
import dataclasses
import time

import numpy as np

from .. import gradient_quality

__all__ = ["GradientQuality", "aims_to_converge", "newton_record"]


def newton_record(cell, ranks):
    """The Newton counters of an ``implicit-newton`` cell over all ranks (None for other cells)."""
    stats = getattr(cell, "stats", None)
    if stats is None:
        return None
    solves, iters, bad = ranks.sum_over_world([stats.solves, stats.iterations, stats.unconverged])
    worst = float(ranks.max_over_world([stats.max_residual])[0])
    return dict(solves=int(solves), iterations=int(iters), unconverged=int(bad), max_residual=worst)


def aims_to_converge(solver):
    """Whether ``solver`` iterates to a tolerance, so that a solve ending unconverged
    (``SolveStats.success`` false) missed it: DEER, quasi-DEER, auto; MGRIT only with a
    tolerance (``atol_l2``, ``rtol_l2`` or ``rms_tol``): the paper's fixed cycle counts end
    unconverged by design (its default ``atol_l2`` is a round-off floor, not a target: only a
    larger one counts). The serial sweep is exact."""
    if solver.name == "serial":
        return False
    cfg = getattr(solver, "config", None)
    if cfg is not None and hasattr(cfg, "rms_tol"):         # MGRIT
        floor = {f.name: f.default for f in dataclasses.fields(cfg)}.get("atol_l2", 0.0)
        return bool(cfg.rtol_l2 > 0 or cfg.rms_tol > 0 or cfg.atol_l2 > floor)
    return True


class GradientQuality:
    """The epoch's counters of a run's gradients, and its gradient checks.

    Parameters
    ----------
    cfg : TrainConfig
        Its ``clip`` and ``gradient_target``.
    solver : solver
        The run's time solver (an MGRIT solver with ``rms_tol`` has its ``tol_scale`` adapted
        by the checks).
    ranks : _Ranks
    n_batches : int
        Batches per epoch.
    owned : bool
        The ranks own their layers (then no gradient checks: each rank has only its rows).
    grad_options : dict, optional
        Keywords of the model's ``loss_and_grad_flat`` for the checks' exact gradient (the
        GRU's ``scaled=True``: an exploding batch's exact gradient keeps its scale apart, as the
        run's own gradient does).

    Attributes
    ----------
    every : int
        Batches between gradient checks (0: none; ``TrainConfig.gradient_check``, default:
        none with the serial solver, else the first batch of every epoch).
    exact : solver or None
        The exact solver of the checks (:func:`gradient_quality.exact_solver`).
    """

    def __init__(self, cfg, solver, ranks, n_batches, owned=False, grad_options=None):
        self.cfg, self.solver, self.ranks = cfg, solver, ranks
        self.grad_options = dict(grad_options or {})
        every = cfg.gradient_check
        if every is None:
            every = 0 if solver.name == "serial" else n_batches
        self.every = 0 if owned else every
        self.exact = gradient_quality.exact_solver(solver) if self.every else None
        self.reset()

    def reset(self, cell=None):
        """Zero the epoch's counters (and those of an implicit-newton ``cell``)."""
        if getattr(cell, "stats", None) is not None:
            cell.stats.reset()
        self.solves, self.scaled, self.seconds, self.checks = 0, 0, 0.0, []
        self.fallback, self.stalled, self.unconverged = np.zeros(2), np.zeros(2), np.zeros(2)
        self.rescued, self.rescue_reason = 0, ""

    def unscale(self, grad, exponent):
        """The gradient from 2^-exponent times it (the serial sweep kept an exploding adjoint's
        scale apart, :meth:`GRUClassifier.loss_and_grad_flat` with ``scaled``): with ``--clip``
        and a true norm above it, the clipped gradient (its direction exact to round-off, at
        any length); otherwise the gradient itself, which is inf where it exceeds the dtype's
        range (then training stops: use --clip).

        Parameters
        ----------
        grad : ndarray, shape (P,), float32 or float64
        exponent : int

        Returns
        -------
        ndarray, shape (P,), ``grad``'s dtype
        """
        self.scaled += 1
        return self._true_scale(grad, exponent)

    def _true_scale(self, grad, exponent):
        """:meth:`unscale` without counting the batch."""
        g64 = grad.astype(np.float64)
        norm = float(np.linalg.norm(g64))
        true_norm = float(np.ldexp(norm, exponent)) if norm > 0 else 0.0
        clip = self.cfg.clip
        if clip is not None and true_norm > clip:
            return (g64 * (clip / norm)).astype(grad.dtype)
        with np.errstate(over="ignore"):
            return np.ldexp(g64, exponent).astype(grad.dtype)

    def count(self, info):
        """Count the solves of one batch (``info`` of ``loss_and_grad_flat``) that fell back to
        the serial sweep, stalled, or ended unconverged (``SolveStats.success`` false: the
        iteration limit, a stall or a divergence with the fallback off; this rank's), or the
        batch whose solve failed and was redone by the serial sweep (``info["rescued"]``, the
        failure's message: the trainer's rescue)."""
        self.solves += 1
        if info.get("rescued"):         # its solve failed: the serial sweep redid the step
            self.rescued += 1
            self.rescue_reason = self.rescue_reason or info["rescued"]
            return
        self.unconverged += [not info["forward"].success, not info["adjoint"].success]
        self.fallback += [bool(info["forward"].fallback), bool(info["adjoint"].fallback)]
        self.stalled += [bool(info["forward"].stalled), bool(info["adjoint"].stalled)]

    def review(self, model, batch, grad, loss, info, pad, running, log):
        """:meth:`count` the solves of ``batch``, and :meth:`check` its gradient every
        :attr:`every` batches (its record to ``log``); returns the ``grad, loss, info`` the
        update uses."""
        self.count(info)
        if self.every and batch.index % self.every == 0:
            grad, loss, info, rec = self.check(model, batch, grad, loss, info, pad, running)
            log(rec)
        return grad, loss, info

    def check(self, model, batch, grad, loss, info, pad, running=contextlib.nullcontext):
        """The gradient check of ``batch``: the exact gradient of the same batch at the same
        parameters by the serial sweep (over the time ranks), compared with the solver's
        ``grad`` (both reduced over the data groups, so every rank decides the same). Below
        ``gradient_target`` the exact gradient replaces the approximate one, and an MGRIT
        solver with ``rms_tol`` tightens its tolerance (above it with a wide margin, loosens
        it). The exact solve runs under ``running()`` (the run's thread settings).

        Returns
        -------
        grad, loss, info
            What the update uses (the exact ones when the check failed).
        rec : dict
            The check's log record (``type="gradient_check"``).
        """
        t0 = time.perf_counter()
        with running():
            l_ex, g_ex, i_ex = model.loss_and_grad_flat(batch.X, batch.y, self.exact,
                                                        lengths=batch.lengths, pad=pad,
                                                        **self.grad_options)
        g_ex, E = self.ranks.common_scale(g_ex, int(i_ex.get("exponent", 0)))
        weight = len(batch.part) / len(batch.idx)
        red = self.ranks.sum_over_data(np.concatenate(
            [g_ex * g_ex.dtype.type(weight), np.array([l_ex * weight], g_ex.dtype)]))
        g_ex, l_ex = red[:-1], float(red[-1])
        if E:           # at its true scale (clipped as the run's own gradient is, :meth:`unscale`)
            g_ex = self._true_scale(g_ex, E)
        err = gradient_quality.compare(grad, g_ex, loss, l_ex)
        target = self.cfg.gradient_target
        used_exact = not err.ok(target)
        solver = self.solver
        scale = getattr(solver, "tol_scale", None)
        if scale is not None and solver.config.rms_tol > 0:
            exact_solves = info["forward"].fallback or info["adjoint"].fallback
            if used_exact:
                solver.tol_scale = max(scale / 4, 1e-3)
            elif not exact_solves and 1 - err.cosine < (1 - target) / 10:
                solver.tol_scale = min(scale * 2, 4.0)     # only MGRIT's own solves say so
        seconds = time.perf_counter() - t0
        self.checks.append((err.cosine, err.rel_error, err.loss_error, used_exact))
        self.seconds += seconds
        rec = dict(type="gradient_check", epoch=batch.epoch + 1, batch=batch.index + 1,
                   cosine=err.cosine, rel_error=err.rel_error, loss_error=err.loss_error,
                   loss=float(loss), exact_loss=l_ex, used_exact=used_exact, seconds=seconds,
                   tol_scale=getattr(solver, "tol_scale", None))
        if used_exact:
            return g_ex.astype(grad.dtype), l_ex, dict(info, logits=i_ex["logits"]), rec
        return grad, loss, info, rec

    def record(self, cell=None):
        """The epoch's gradient checks, fallbacks and unconverged solves (``unconverged``: of a
        solver that :func:`aims_to_converge`) for its record (summed over the data groups; the
        checks are the same on every rank), and the Newton counters of an
        implicit-newton ``cell`` (:func:`newton_record`)."""
        out, ranks = {}, self.ranks
        if self.scaled:
            out["scaled_adjoint"] = int(self.scaled)
        if self.solver.name != "serial":
            fb = ranks.sum_over_data(np.concatenate([self.fallback, self.stalled,
                                                     self.unconverged]))
            solves = int(ranks.sum_over_data(np.array([self.solves], np.float64))[0])
            out["fallback"] = dict(forward=int(fb[0]), adjoint=int(fb[1]), solves=solves)
            out["stalled"] = dict(forward=int(fb[2]), adjoint=int(fb[3]))
            if aims_to_converge(self.solver):
                out["unconverged"] = dict(forward=int(fb[4]), adjoint=int(fb[5]), solves=solves)
            rescued = int(ranks.sum_over_data(np.array([self.rescued], np.float64))[0])
            if rescued:
                out["rescued"] = dict(steps=rescued, solves=solves, first=self.rescue_reason)
        if self.checks:
            c = np.array([x[:3] for x in self.checks], np.float64)
            out["gradient_check"] = dict(
                batches=len(c), cosine_min=float(np.min(c[:, 0])),
                cosine_median=float(np.median(c[:, 0])), rel_error_max=float(np.max(c[:, 1])),
                loss_error_max=float(np.max(c[:, 2])),
                used_exact=int(sum(x[3] for x in self.checks)), seconds=self.seconds,
                tol_scale=getattr(self.solver, "tol_scale", None))
        newton = newton_record(cell, ranks)
        if newton is not None:
            out["newton"] = newton
        return out
