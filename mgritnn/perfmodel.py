"""Deprecated: the performance model is the planner package :mod:`mgritnn.plan` now.

``from mgritnn.perfmodel import predict`` still works (with a :class:`DeprecationWarning`); import
from :mod:`mgritnn.plan` instead. Only the public names are re-exported: the modules of the
package (:mod:`mgritnn.plan.ops`, :mod:`~mgritnn.plan.costs`, :mod:`~mgritnn.plan.calibrate`,
:mod:`~mgritnn.plan.model`, :mod:`~mgritnn.plan.format`, :mod:`~mgritnn.plan.auto`) hold the rest.
"""
import warnings

from .plan import *  # noqa: F401,F403
from .plan import __all__  # noqa: F401

warnings.warn("mgritnn.perfmodel is deprecated: import from mgritnn.plan", DeprecationWarning,
              stacklevel=2)
