"""Nested iteration's schedule (ODENets): train a network ``nested_cf`` times shallower first,
refine it (layers interpolated), train again, up to the full depth.

One level without nested iteration (every model): the schedule then only counts the run's
epochs.
"""
from ..errors import ConfigError

__all__ = ["NestedSchedule"]


class NestedSchedule:
    """The levels of a run and where it stands in them.

    Parameters
    ----------
    cfg : TrainConfig
        Its :meth:`~TrainConfig.nested_stages`, ``nested_target_acc``, ``nested_cf`` and
        ``nested_interp``.

    Attributes
    ----------
    stages : list of (int, int)
        ``(depth, epochs)`` of every level, coarsest first; the last is the finest network.
    stage : int
        The current level (index into :attr:`stages`).
    start : int
        The first epoch (0-based) of the current level.
    over : bool
        The current level ended before its budget (L-BFGS stopped or converged).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.stages = cfg.nested_stages()
        self.stage, self.start, self.over = 0, 0, False

    @property
    def nested(self):
        """Whether the run has several levels."""
        return len(self.stages) > 1

    @property
    def depth(self):
        """The depth of the current level's network."""
        return self.stages[self.stage][0]

    @property
    def level(self):
        """The current level counted from the finest (0) to the coarsest (K)."""
        return len(self.stages) - 1 - self.stage

    @property
    def finest(self):
        """Whether the current level is the last (the finest network)."""
        return self.stage == len(self.stages) - 1

    def budget_left(self, epoch):
        """Epochs of the current level's budget left before epoch ``epoch`` (0-based)."""
        return self.stages[self.stage][1] - (epoch - self.start)

    def finished(self, epoch, history):
        """Whether the current level is done before epoch ``epoch`` (0-based): its budget of
        epochs is spent, it is :attr:`over`, or (a coarse level) the last epoch record of
        ``history`` reached ``cfg.nested_target_acc`` training accuracy."""
        if self.over or self.budget_left(epoch) <= 0:
            return True
        target = self.cfg.nested_target_acc
        return (not self.finest and target is not None and epoch > self.start and bool(history)
                and history[-1]["train_acc"] >= target)

    def refine(self, model, epoch):
        """Go to the next level from epoch ``epoch``: returns ``model`` refined
        (``cfg.nested_cf`` times deeper, layers interpolated by ``cfg.nested_interp``)."""
        fine = model.refined(self.cfg.nested_cf, self.cfg.nested_interp)
        self.stage, self.start, self.over = self.stage + 1, epoch, False
        return fine

    def check_hierarchy(self, solver, depths):
        """Raise ConfigError when ``solver``'s hierarchy does not fit one of the time axes
        ``depths`` (naming nested iteration's level when it is not the finest)."""
        for depth in depths:
            try:
                solver.local_steps(depth)
            except ConfigError as e:
                if not self.nested or depth == self.stages[-1][0]:
                    raise
                raise ConfigError(f"nested iteration's network of depth {depth}: {e} (or use "
                                  "--levels 0, automatic levels, which fit every depth)") from None

    def checkpoint_fields(self):
        """The schedule's metadata for a checkpoint (None without nested iteration)."""
        return dict(nested_stage=self.stage, stage_start=self.start) if self.nested else None

    def restore(self, meta):
        """Take the level of a checkpoint's metadata ``meta``.

        Returns
        -------
        bool
            Whether the level changed (the run's model must then be rebuilt at :attr:`depth`).
        """
        stage = int(meta.get("nested_stage", len(self.stages) - 1))
        changed = stage != self.stage and stage < len(self.stages)
        if changed:
            self.stage = stage
        self.start = int(meta.get("stage_start", 0))
        return changed
