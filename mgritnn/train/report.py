"""What a training run reports: the JSON-lines log (epoch, batch, gradient-check and refine
records), the progress line on stderr, and the human-readable epoch lines."""
import json
import os
import sys
import time

import numpy as np

from ..errors import output_error
from ..io import prepare_output

__all__ = ["EpochTally", "Reporter", "batch_record", "json_line", "zero_times"]


def json_line(rec):
    """One strict JSON line: NaN/inf (e.g. a residual that was not measured) become null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v
    return json.dumps(clean(rec), allow_nan=False) + "\n"


def batch_record(batch, result):
    """The log record of one batch (``type="batch"``): its loss, the largest step evaluations of
    any rank, and each solve's counts (``info`` of ``loss_and_grad_flat``: the forward and
    adjoint :class:`~mgritnn.solvers.base.SolveStats`), named by what they count."""
    f, a = result.info["forward"], result.info["adjoint"]
    return dict(type="batch", epoch=batch.epoch + 1, batch=batch.index + 1, loss=result.loss,
                step_evals_max_rank=result.evals.tolist(),
                forward_iterations=f.iterations, forward_residual=f.residual,
                forward_status=f.status, forward_fallback=f.fallback,
                forward_message=f.message, forward_grew=f.grew,
                adjoint_iterations=a.iterations, adjoint_residual=a.residual,
                adjoint_status=a.status, adjoint_grew=a.grew)


def zero_times():
    """The seconds of an epoch (or L-BFGS iteration) in data, forward, adjoint, wait and
    optimizer, all zero."""
    return dict(data=0.0, forward=0.0, adjoint=0.0, wait=0.0, optimizer=0.0)


class EpochTally:
    """What an epoch's batches (or an L-BFGS iteration's evaluations) did, for its record.

    Attributes
    ----------
    t0 : float
        When the epoch began (``time.perf_counter``).
    loss, accuracy : float
        The mean loss and accuracy of the batches added with their size (L-BFGS sets them).
    steps : ndarray, shape (2,), float64
        Step evaluations of the forward and adjoint solves (the most of any rank), summed.
    grew : ndarray, shape (2,), float64
        Forward and adjoint solves whose residual grew (this rank's).
    batches : int
        Gradients added.
    """

    def __init__(self):
        self.t0 = time.perf_counter()
        self.loss = self.accuracy = float("nan")
        self._loss_sum = self._correct = self._seen = 0.0
        self.steps, self.grew, self.batches = np.zeros(2), np.zeros(2), 0

    def add(self, result, size=None):
        """Count a :class:`StepResult`; with the batch's ``size``, its loss and accuracy too."""
        self.steps += result.evals
        self.grew += [result.info["forward"].grew, result.info["adjoint"].grew]
        self.batches += 1
        if size is not None:
            self._loss_sum += result.loss * size
            self._correct += result.correct
            self._seen += size
            self.loss, self.accuracy = self._loss_sum / self._seen, self._correct / self._seen

    def record(self, epoch, test, eval_seconds, times, solver, ranks, data_parallel, **fields):
        """The epoch's record (``type="epoch"``) for epoch ``epoch`` (0-based) with its
        evaluation ``test`` (:func:`evaluate`'s dict) in ``eval_seconds``, the ``times`` of its
        parts, the ``solver``'s name, the run's ``ranks`` (the grown solves are summed over the
        data groups), ``data_parallel`` and the model's ``fields``."""
        b = self.batches
        rec = dict(type="epoch", epoch=epoch + 1, loss=self.loss, train_acc=self.accuracy,
                   test_loss=test["loss"], test_acc=test["accuracy"],
                   seconds=time.perf_counter() - self.t0, eval_seconds=eval_seconds, time=times,
                   step_evals_per_rank=dict(forward=self.steps[0] / b, adjoint=self.steps[1] / b),
                   batches=b, solver=solver, ranks=ranks.size, data_parallel=data_parallel,
                   **fields)
        if solver != "serial":
            grew = ranks.sum_over_data(self.grew)       # the same on the ranks of a data group
            rec["grew"] = dict(forward=int(grew[0]), adjoint=int(grew[1]))
        return rec


class _Progress:
    """A progress line on stderr during long epochs: redrawn in place on a terminal, else every 30 s."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = time.perf_counter()
        self.shown = False

    def update(self, text):
        now = time.perf_counter()
        if now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        self.shown = True
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.shown = False


class _Log:
    """The JSON-lines log (rank 0), opened for appending; OS errors become OutputError."""

    def __init__(self, path):
        self.path = path
        try:
            self._end_partial_line()
            self.file = open(path, "a")
        except OSError as e:
            raise output_error(e, "cannot open the log (--log)", path) from e

    def _end_partial_line(self):
        """A run killed while writing may leave an incomplete last record (no newline): drop it
        (when it is one of ours, starting '{"'), else end the line, so that the next record
        starts on a line of its own."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 65536))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            start = tail.rfind(b"\n") + 1
            if tail[start:start + 2] == b'{"' and (start > 0 or size <= 65536):
                f.truncate(size - len(tail) + start)
            else:
                f.write(b"\n")

    def write(self, rec, flush=False):
        try:
            self.file.write(json_line(rec))
            if flush:
                self.file.flush()
        except OSError as e:
            raise output_error(e, "cannot write the log (--log)", self.path) from e

    def close(self, quiet=False):
        try:
            self.file.close()
        except OSError as e:
            if not quiet:
                raise output_error(e, "cannot write the log (--log)", self.path) from e


class Reporter:
    """The run's reports: the JSON-lines log (``cfg.log``), a progress line and the epoch lines
    (``out``), on rank 0 only (the other ranks' reporter says nothing).

    Constructing it checks that the log can be written (directory created, a probe file
    written beside it); :meth:`open` opens it (after the compilation warm-up).

    Parameters
    ----------
    cfg : TrainConfig
    root : bool
        This is rank 0.
    out : callable
        Receives the human-readable lines.
    progress : bool
        Show a progress line on stderr during long epochs.
    """

    def __init__(self, cfg, root, out=print, progress=True):
        self.cfg, self.root = cfg, root
        self.out = out if root else (lambda *a, **k: None)
        self.bar = _Progress() if (progress and root) else None
        self.log_file = None

    def prepare(self):
        """Check that the log can be written (rank 0, with ``cfg.log``), before any work."""
        if self.cfg.log and self.root:
            prepare_output(self.cfg.log, "--log", append=True)

    def open(self):
        """Open the log for appending (rank 0, with ``cfg.log``)."""
        if self.cfg.log and self.root:
            self.log_file = _Log(self.cfg.log)

    def log(self, rec, flush=False):
        """Write ``rec`` to the JSON-lines log (rank 0, with ``cfg.log``)."""
        if self.log_file:
            self.log_file.write(rec, flush=flush)

    def progress(self, text):
        """Redraw the progress line (see :class:`_Progress`)."""
        if self.bar:
            self.bar.update(text)

    def progress_done(self):
        """Clear the progress line at the end of an epoch."""
        if self.bar:
            self.bar.done()

    def close(self, quiet=False):
        """Close the log (``quiet``: ignore an error while closing it)."""
        if self.log_file:
            self.log_file.close(quiet=quiet)
            self.log_file = None

    def refine(self, epoch, depth_from, depth_to, before, after):
        """Report and log (``type="refine"``) nested iteration's refinement after epoch
        ``epoch`` from depth ``depth_from`` to ``depth_to``, with the training loss
        (cross-entropy) ``before`` and ``after``."""
        self.out(f"nested iteration: depth {depth_from} -> {depth_to} "
                 f"({self.cfg.nested_interp} interpolation), training loss {before:.4f} -> "
                 f"{after:.4f}")
        self.log(dict(type="refine", after_epoch=epoch, depth_from=depth_from, depth_to=depth_to,
                      train_loss_coarse=before, train_loss_fine=after), flush=True)

    def epoch(self, rec, nested=False):
        """The epoch's line (with its depth when ``nested``), and warning lines when the solver's
        iteration stopped contracting in some batches (``SolveStats.grew``), fell back, ended
        unconverged (``unconverged``, of :meth:`GradientQuality.record`), failed and were redone
        by the serial sweep (``rescued``), took
        gradient checks, kept an exploding adjoint's scale, or Newton row solves of an
        implicit-newton cell did not converge."""
        depth = f"  depth {rec['depth']:3d}" if nested else ""
        self.out(f"epoch {rec['epoch']:3d}{depth}  loss {rec['loss']:.4f}  train acc "
                 f"{100 * rec['train_acc']:6.2f}%  test acc {100 * rec['test_acc']:6.2f}%  "
                 f"{rec['seconds']:7.2f} s")
        for line in self.warnings(rec):
            self.out(line)

    def warnings(self, rec):
        """The warning lines of an epoch record (a list of str)."""
        lines, clip, target = [], self.cfg.clip, self.cfg.gradient_target
        grew = rec.get("grew")
        if grew and (grew["forward"] or grew["adjoint"]):
            lines.append(
                f"  warning: the {rec['solver']} residual grew over the cycles (not "
                f"contracting) in {grew['forward']} forward and {grew['adjoint']} adjoint "
                f"solves of {rec['batches']} batches: their gradients are not the serial "
                "sweep's, and more cycles make them worse. The coarse levels' long steps do "
                "not follow this model's dynamics: use fewer --levels (2: the coarse level "
                "is solved exactly) or a smaller --cf, with the classic cell also --cell "
                "implicit; or --solver serial or deer")
        if rec.get("scaled_adjoint"):
            lines.append(f"  exploding gradients: the adjoint of {rec['scaled_adjoint']} batches "
                         "outgrew the dtype's range and was kept at a power-of-two scale"
                         + (f"; --clip {clip:g} took their exact direction"
                            if clip is not None else ""))
        fb = rec.get("fallback")
        if fb and (fb["forward"] or fb["adjoint"]):
            lines.append(f"  fallback: the serial sweep took {fb['forward']} forward and "
                         f"{fb['adjoint']} adjoint solves of {fb['solves']} batches (their "
                         f"{rec['solver']} solve missed its tolerance; those gradients are exact)")
        rescued = rec.get("rescued")
        if rescued:
            lines.append(f"  warning: the {rec['solver']} solves failed in {rescued['steps']} of "
                         f"{rescued['solves']} steps (the first: {rescued['first']}); the serial "
                         "sweep redid those steps (exact gradients). Fewer --levels, a smaller "
                         "--cf or an implicit coarse cell make the solves hold; --no-rescue stops "
                         "the run instead")
        un = rec.get("unconverged")
        if un and (un["forward"] or un["adjoint"]):
            lines.append(f"  warning: {un['forward']} of {un['solves']} forward and "
                         f"{un['adjoint']} of {un['solves']} adjoint {rec['solver']} solves did "
                         "not converge (iteration limit or stall, no fallback): their gradients "
                         "are approximate. Raise max_iter (--max-iter), loosen atol/rtol, or let "
                         "the serial sweep take over (fallback=True: drop --no-fallback)")
        chk = rec.get("gradient_check")
        if chk:
            share = 100 * chk["seconds"] / max(rec["seconds"], 1e-12)
            lines.append(
                f"  gradient check: {chk['batches']} batch(es), cosine min "
                f"{chk['cosine_min']:.4f} (median {chk['cosine_median']:.4f}), relative "
                f"error max {chk['rel_error_max']:.2e}, loss error max "
                f"{chk['loss_error_max']:.2e}; {chk['seconds']:.2f} s ({share:.0f} % of the "
                "epoch)" + (f"; {chk['used_exact']} below the target {target:g} took the exact "
                            "gradient" if chk["used_exact"] else ""))
        newton = rec.get("newton")
        if newton is not None and newton["unconverged"]:
            lines.append(f"  warning: {newton['unconverged']} of {newton['solves']} "
                         f"implicit-newton row solves did not reach the tolerance (worst |G| "
                         f"{newton['max_residual']:.2e}): smaller --dt or weights, or a larger "
                         "max_iter")
        return lines
