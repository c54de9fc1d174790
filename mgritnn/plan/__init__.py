"""The planner: a performance model of one training step, beside the solvers (not inside them).

It predicts the time of a training step of the GRU classifier for a shape (B, T, I, H, L), a route
and P ranks, from three separate parts:

1. **Operation counts** (:mod:`.ops`, :func:`step_ops`): every rank's kernel calls, messages and
   collectives, in order, following the solvers' control flow on their very grids.
2. **Costs** (:mod:`.costs`, :class:`Costs`): a table of one machine's kernel, solver and
   communication costs, and the **critical path** through the ranks' operations (pure arithmetic,
   :func:`critical_path`).
3. **Calibration** (:mod:`.calibration`, :func:`calibrate`): measuring a table on this machine,
   cached per machine by :func:`load_or_calibrate`. It runs only when asked (``mgritnn plan``,
   the perf scripts, or a predictor for ``solver="auto"``), never as a side effect of training.

:mod:`.model` puts them together (:func:`predict`, :func:`validate`, :func:`plan`); :mod:`.format`
writes the plan as text (:func:`format_plan`: ``mgritnn plan``); :mod:`.auto` hands the model to
``solver="auto"`` as a predictor (:func:`auto_predictor`, :func:`planned_solver`).

Layers: the planner imports the solvers (it counts their operations and calibrates by running
them); the solvers never import the planner (``AutoSolver`` is given a predictor).

References
----------
R. D. Falgout et al., "Parallel time integration with multigrid", SIAM J. Sci. Comput. 36(6), 2014.
G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
sequences", ICLR 2022.
Y. H. Lim et al., "Parallelizing non-linear sequential models over the sequence length", ICLR 2024.
"""
from .calibration import CHAIN, SIZES, calibrate, covers, load_or_calibrate
from .costs import (ASSUMED_BANDWIDTH, ASSUMED_LATENCY_S, CACHE_VERSION, Costs, cache_key,
                    cache_path, call_time, comm_time, critical_path, extrapolate_threads,
                    position_time, read_cache, write_cache)
from .format import format_plan
from .auto import auto_predictor, model_solve_times, planned_solver
from .model import PlanRow, Prediction, plan, predict, validate
from .ops import (DEFAULT_DEER_ITERS, ROUTES, Op, Shape,
                  mgrit_config, mgrit_solve_ops, num_params, parse_shape, phase_counts,
                  step_evals, step_ops)

__all__ = ["ASSUMED_BANDWIDTH", "ASSUMED_LATENCY_S", "CACHE_VERSION", "CHAIN", "Costs",
           "DEFAULT_DEER_ITERS", "Op", "PlanRow", "Prediction", "ROUTES",
           "SIZES", "Shape", "auto_predictor", "cache_key", "cache_path", "calibrate",
           "call_time", "comm_time", "covers", "critical_path",
           "extrapolate_threads", "format_plan", "load_or_calibrate", "mgrit_config",
           "mgrit_solve_ops", "model_solve_times", "num_params", "parse_shape", "phase_counts",
           "plan", "planned_solver", "position_time", "predict", "read_cache", "step_evals",
           "step_ops", "validate", "write_cache"]
