"""The parts of the trainer, each on its own: data and batching, the checkpointer, the reporter,
nested iteration's schedule, the L-BFGS driver, the owned layers, the per-model adapters."""
import json
import types
import warnings

import numpy as np
import pytest

from mgritnn.errors import CheckpointError, ConfigError, DivergenceError, MgritnnWarning
from mgritnn.io import temp_prefix
from mgritnn.odenet import ODENet
from mgritnn.optim import make_optimizer, state_to_arrays
from mgritnn.solvers import SolverState
from mgritnn.train import Batch, StepResult, TrainConfig, _Ranks, build_model, save_checkpoint
from mgritnn.train.checkpoint import Checkpointer, gather_warm_arrays
from mgritnn.train.data import TrainData, check_last_batch
from mgritnn.train.lbfgs import LBFGSDriver
from mgritnn.train.models import GRUAdapter, ODENetAdapter, adapter_for
from mgritnn.train.nested import NestedSchedule
from mgritnn.train.owned import OwnedLayers
from mgritnn.train.report import EpochTally, Reporter, batch_record, json_line, zero_times

SMALL = dict(epochs=2, hidden=4, seq_len=8, batch_size=16, max_batches=3, seed=3)


def quiet(*a, **k):
    pass


# -- data and batching ---------------------------------------------------------------------------
def test_batches_follow_the_generators_permutation():
    cfg = TrainConfig(**SMALL)
    data = TrainData(cfg, _Ranks(None, 1))
    assert data.n_batches == 3 and data.len_train is None
    perm = np.random.default_rng(7).permutation(len(data.X_train))
    times = zero_times()
    batches = list(data.batches(0, np.random.default_rng(7), times))
    assert [b.index for b in batches] == [0, 1, 2] and times["data"] > 0
    for b in batches:
        assert isinstance(b, Batch) and b.epoch == 0
        np.testing.assert_array_equal(b.idx, perm[16 * b.index:16 * (b.index + 1)])
        np.testing.assert_array_equal(b.part, b.idx)          # one data group: all of it
        assert b.X.tobytes() == data.X_train[b.idx].tobytes()
        np.testing.assert_array_equal(b.y, data.ds.y_train[b.idx])
    full = data.full_batch(4)
    assert full.epoch == 4 and len(full.idx) == len(data.X_train)
    X, y, lengths = data.split(train=False)
    assert X is data.X_test and y is data.ds.y_test and lengths is None


def test_a_last_batch_smaller_than_the_data_groups_is_refused_with_a_size_that_works():
    cfg = types.SimpleNamespace(batch_size=10, data_parallel=3, max_batches=None)
    with pytest.raises(ConfigError, match="use --batch-size 9"):
        check_last_batch(21, cfg)          # 10, 10, 1: the last has 1 < 3 samples
    check_last_batch(23, cfg)              # 10, 10, 3
    cfg.max_batches = 2
    check_last_batch(21, cfg)              # the short batch is never reached


def test_the_memory_check_sees_the_batch_of_the_optimizer():
    seen = []
    TrainData(TrainConfig(**SMALL), _Ranks(None, 1), check_memory=lambda ds, b: seen.append(b))
    cfg = TrainConfig(epochs=1, hidden=4, seq_len=8, optimizer="lbfgs")
    data = TrainData(cfg, _Ranks(None, 1), full_batch=True,
                     check_memory=lambda ds, b: seen.append(b))
    assert seen == [16, len(data.X_train)]


# -- the checkpointer ----------------------------------------------------------------------------
def _state(tmp_path, **kw):
    cfg = TrainConfig(checkpoint=str(tmp_path / "ck.npz"), **dict(SMALL, **kw))
    data = TrainData(cfg, _Ranks(None, 1))
    model = build_model(cfg, data.X_train.shape[-1], data.ds.num_classes)
    opt = make_optimizer("adam", lr=1e-3)
    rng = np.random.default_rng(5)
    state = opt.init(model.flat)
    g = rng.normal(size=model.flat.shape).astype(model.flat.dtype)
    _, state = opt.update(g, state, model.flat)
    return cfg, data, model, opt, state, rng


def test_checkpointer_round_trip_is_bitwise(tmp_path):
    cfg, data, model, opt, state, rng = _state(tmp_path)
    ranks = _Ranks(None, 1)
    ck = Checkpointer(cfg, ranks, quiet)
    hist = [dict(epoch=1, loss=0.5, test_loss=0.6)]
    solver = types.SimpleNamespace(state=SolverState(scalars={"tol_scale": 0.25}),
                                   load_state=lambda st: loaded.update(st.to_arrays()))
    loaded = {}
    ck.save(1, model, state_to_arrays(state), solver, data.standardizer, rng, hist, data.ds,
            dict(nested_stage=0, stage_start=0))
    arrays, meta = ck.read()
    assert meta["epoch"] == 1 and meta["nested_stage"] == 0 and meta["warm_ranks"] == 1
    fresh = build_model(cfg, data.X_train.shape[-1], data.ds.num_classes)
    fresh.flat[:] = 0
    rng2 = np.random.default_rng(99)
    lines = []
    ck.out = lines.append
    got, epoch, history = ck.resume(arrays, meta, fresh, opt, opt.init(fresh.flat), rng2,
                                    solver, OwnedLayers(solver, False))
    assert fresh.flat.tobytes() == model.flat.tobytes() and epoch == 1 and history == hist
    assert got.step == state.step and got.m.tobytes() == state.m.tobytes()
    assert got.v.tobytes() == state.v.tobytes()
    assert rng2.bit_generator.state == rng.bit_generator.state
    np.testing.assert_array_equal(loaded["tol_scale"], [0.25])
    assert lines == [f"resumed from {cfg.checkpoint} after epoch 1"]


def test_checkpointer_refuses_non_finite_states_and_keeps_the_last_good(tmp_path):
    cfg, data, model, opt, state, rng = _state(tmp_path)
    save_checkpoint(cfg, 1, model, state, data.standardizer, rng, [dict(loss=1.0)], data.ds)
    before = open(cfg.checkpoint, "rb").read()
    bad = state._replace(m=np.full_like(state.m, np.nan))
    with pytest.raises(DivergenceError, match="epoch 2.*keeps epoch 1"):
        save_checkpoint(cfg, 2, model, bad, data.standardizer, rng, [dict(loss=1.0)], data.ds)
    assert open(cfg.checkpoint, "rb").read() == before


def test_checkpointer_removes_stale_temporaries_and_checks_the_kind(tmp_path):
    cfg, data, model, opt, state, rng = _state(tmp_path)
    stale = tmp_path / (temp_prefix(cfg.checkpoint).split("/")[-1] + "x.npz")
    stale.write_bytes(b"partial")
    lines = []
    ck = Checkpointer(cfg, _Ranks(None, 1), lines.append)
    assert not stale.exists() and "removed 1 temporary file(s)" in lines[0]
    np.savez(cfg.checkpoint, a=np.zeros(1))
    with pytest.raises(CheckpointError, match="not an mgritnn training checkpoint"):
        ck.read()


def test_resume_with_other_settings_warns_and_drops_another_optimizers_state(tmp_path):
    cfg, data, model, opt, state, rng = _state(tmp_path)
    save_checkpoint(cfg, 1, model, state, data.standardizer, rng, [], data.ds)
    other = TrainConfig(checkpoint=cfg.checkpoint, optimizer="sgd", **SMALL)
    ck = Checkpointer(other, _Ranks(None, 1), quiet)
    arrays, meta = ck.read()
    sgd = make_optimizer("sgd", lr=0.01)
    fresh = sgd.init(model.flat)
    solver = types.SimpleNamespace(load_state=None)
    with pytest.warns(MgritnnWarning, match="optimizer adam -> sgd .the adam state is dropped"):
        got, _, _ = ck.resume(arrays, meta, model, sgd, fresh, rng, solver,
                              OwnedLayers(solver, False))
    assert got is fresh


def test_gather_warm_arrays_names_each_ranks_states():
    ranks = _Ranks(None, 1)
    solver = types.SimpleNamespace(state=SolverState(scalars={"a": 2.0}))
    assert list(gather_warm_arrays(solver, ranks)) == ["warm/r0/a"]


# -- the reporter --------------------------------------------------------------------------------
def _stats(**kw):
    base = dict(iterations=2, residual=0.25, status=0, fallback=False, message="converged",
                grew=False, step_evals=10, stalled=False)
    return types.SimpleNamespace(**dict(base, **kw))


def test_batch_records_name_what_they_count():
    batch = Batch(1, 4, np.arange(3), np.arange(3), None, None)
    result = StepResult(0.5, 2.0, np.array([10.0, 4.0]),
                        dict(forward=_stats(), adjoint=_stats(iterations=1, residual=np.inf)))
    rec = json.loads(json_line(batch_record(batch, result)))
    assert rec["type"] == "batch" and (rec["epoch"], rec["batch"]) == (2, 5)
    assert rec["forward_iterations"] == 2 and rec["adjoint_iterations"] == 1
    assert rec["forward_residual"] == 0.25 and rec["adjoint_residual"] is None   # inf -> null
    assert rec["forward_message"] == "converged" and rec["step_evals_max_rank"] == [10.0, 4.0]
    assert not any(k.startswith(("fwd_", "bwd_")) for k in rec)


def test_the_log_drops_a_partial_last_record_and_appends(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"type": "epoch", "epoch": 1}\n{"type": "ep')
    cfg = TrainConfig(log=str(path), **SMALL)
    rep = Reporter(cfg, True, quiet, progress=False)
    rep.prepare()
    rep.open()
    rep.log(dict(type="epoch", epoch=2, loss=np.float32(0.5), n=np.int64(3)), flush=True)
    rep.close()
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs == [dict(type="epoch", epoch=1), dict(type="epoch", epoch=2, loss=0.5, n=3)]


def test_the_reporter_of_other_ranks_says_nothing(tmp_path):
    lines = []
    rep = Reporter(TrainConfig(log=str(tmp_path / "l.jsonl"), **SMALL), False, lines.append)
    rep.prepare()
    rep.open()
    rep.epoch(dict(epoch=1, loss=1.0, train_acc=0.5, test_acc=0.5, seconds=1.0))
    rep.log(dict(type="x"))
    assert lines == [] and rep.bar is None and not (tmp_path / "l.jsonl").exists()


def test_epoch_lines_and_their_warnings():
    lines = []
    rep = Reporter(TrainConfig(clip=1.0, **SMALL), True, lines.append, progress=False)
    rec = dict(epoch=3, depth=8, loss=0.25, train_acc=0.5, test_acc=0.75, seconds=2.0,
               solver="mgrit", batches=4, grew=dict(forward=1, adjoint=0), scaled_adjoint=2,
               fallback=dict(forward=0, adjoint=1, solves=4),
               newton=dict(unconverged=1, solves=9, max_residual=1e-3))
    rep.epoch(rec, nested=True)
    assert lines[0].startswith("epoch   3  depth   8  loss 0.2500  train acc  50.00%  test acc  "
                               "75.00%")
    assert "not contracting" in lines[1] and "--clip 1 took their exact direction" in lines[2]
    assert "1 adjoint solves of 4 batches" in lines[3] and "implicit-newton" in lines[4]
    assert len(lines) == 5


def test_epoch_tally_means_and_record():
    tally = EpochTally()
    for loss, correct, size in [(1.0, 3.0, 4), (0.5, 1.0, 2)]:
        r = StepResult(loss, correct, np.array([6.0, 2.0]),
                       dict(forward=_stats(grew=True), adjoint=_stats()))
        tally.add(r, size)
    assert tally.loss == pytest.approx(2.5 / 3) and tally.accuracy == pytest.approx(4 / 6)
    rec = tally.record(0, dict(loss=0.7, accuracy=0.9), 0.1, zero_times(), "mgrit",
                       _Ranks(None, 1), 1, depth=4)
    assert rec["epoch"] == 1 and rec["batches"] == 2 and rec["depth"] == 4
    assert rec["step_evals_per_rank"] == dict(forward=6.0, adjoint=2.0)
    assert rec["grew"] == dict(forward=2, adjoint=0) and rec["test_acc"] == 0.9


# -- nested iteration's schedule -----------------------------------------------------------------
NESTED = dict(model="odenet", data="peaks", width=3, depth=8, nested_levels=2,
              nested_epochs=(2, 1), epochs=3)


def test_the_nested_schedule_counts_each_levels_epochs():
    s = NestedSchedule(TrainConfig(**NESTED))
    assert s.stages == [(2, 2), (4, 1), (8, 3)] and s.nested and s.depth == 2 and s.level == 2
    assert not s.finished(1, []) and s.finished(2, [])
    model = ODENet(2, 3, 2, 2, seed=0)
    fine = s.refine(model, 2)
    assert fine.depth == 4 and (s.stage, s.start, s.depth, s.level) == (1, 2, 4, 1)
    assert s.budget_left(2) == 1 and s.finished(3, []) and not s.finest
    s.refine(fine, 3)
    assert s.finest and s.budget_left(3) == 3 and not s.finished(5, [])
    assert s.checkpoint_fields() == dict(nested_stage=2, stage_start=3)
    s.over = True
    assert s.finished(3, [])


def test_a_coarse_level_ends_at_the_target_accuracy():
    s = NestedSchedule(TrainConfig(**dict(NESTED, nested_target_acc=0.8)))
    assert not s.finished(0, [dict(train_acc=0.9)])          # no epoch of this level yet
    assert not s.finished(1, [dict(train_acc=0.7)])
    assert s.finished(1, [dict(train_acc=0.8)])


def test_the_nested_schedule_restores_a_checkpoints_level():
    s = NestedSchedule(TrainConfig(**NESTED))
    assert s.restore(dict(nested_stage=1, stage_start=2)) and (s.stage, s.start) == (1, 2)
    assert not s.restore(dict(nested_stage=1, stage_start=2))
    plain = NestedSchedule(TrainConfig(**SMALL))
    assert not plain.nested and plain.checkpoint_fields() is None
    assert not plain.restore({}) and plain.stage == 0


def test_a_hierarchy_that_misses_a_coarse_level_names_it():
    s = NestedSchedule(TrainConfig(**NESTED))

    def local_steps(depth):
        if depth < 4:
            raise ConfigError("too few steps")
        return 0, depth
    solver = types.SimpleNamespace(local_steps=local_steps)
    with pytest.raises(ConfigError, match="nested iteration's network of depth 2: too few"):
        s.check_hierarchy(solver, [2, 4, 8])
    s.check_hierarchy(solver, [4, 8])


# -- the L-BFGS driver ---------------------------------------------------------------------------
class _Quadratic:
    """A stand-in trainer: the loss 0.5 |x - c|^2 of a 3-parameter "model"."""

    def __init__(self, budget):
        self.c = np.array([1.0, -2.0, 0.5])
        self.model = types.SimpleNamespace(flat=np.zeros(3))
        self.data = types.SimpleNamespace(
            X_train=np.zeros((4, 1, 1)),
            full_batch=lambda epoch: Batch(epoch, 0, np.arange(4), np.arange(4), None, None))
        self.ranks = types.SimpleNamespace(size=1)
        self.schedule = NestedSchedule(TrainConfig(epochs=budget, **{
            k: v for k, v in SMALL.items() if k != "epochs"}))
        self.history, self.times, self.evaluated = [], None, []

    def gradient(self, batch):
        x = self.model.flat
        self.evaluated.append(batch.epoch)
        info = dict(forward=_stats(), adjoint=_stats())
        return x - self.c, StepResult(0.5 * float((x - self.c) @ (x - self.c)), 4.0,
                                      np.array([1.0, 1.0]), info)

    def finish_epoch(self, epoch, tally):
        self.history.append(dict(epoch=epoch + 1, loss=tally.loss, train_acc=tally.accuracy,
                                 batches=tally.batches, x=self.model.flat.copy()))

    def stage_finished(self, epoch):
        return self.schedule.finished(epoch, self.history)


def test_lbfgs_converges_on_a_quadratic_one_record_per_iteration():
    tr = _Quadratic(budget=20)
    epoch = LBFGSDriver(tr).run(0)
    np.testing.assert_allclose(tr.model.flat, tr.c, atol=1e-6)
    assert epoch == len(tr.history) and 1 <= epoch < 20 and tr.schedule.over
    assert [r["epoch"] for r in tr.history] == list(range(1, epoch + 1))
    assert tr.history[-1]["loss"] < 1e-10 and tr.history[0]["train_acc"] == 1.0
    assert np.array_equal(tr.history[-1]["x"], tr.model.flat)


def test_lbfgs_stops_at_the_levels_budget():
    tr = _Quadratic(budget=1)
    assert LBFGSDriver(tr).run(0) == 1 and len(tr.history) == 1
    assert not np.array_equal(tr.model.flat, np.zeros(3))     # the accepted iterate
    assert tr.schedule.over


# -- owned layers and the per-model adapters -----------------------------------------------------
def test_owned_layers_mask_the_rows_a_rank_does_not_own():
    model = ODENet(2, 3, 2, 5, seed=0)
    solver = types.SimpleNamespace(local_steps=lambda depth: (1, 3))
    opt = make_optimizer("adam", lr=1e-2)
    state = state_to_arrays(opt.update(np.ones_like(model.flat), opt.init(model.flat),
                                       model.flat)[1])
    OwnedLayers(solver, False).mask(model, state)
    assert all(model.layer_rows(state[k]).all() for k in ("m", "v"))
    OwnedLayers(solver, True).mask(model, state)
    for k in ("m", "v"):
        rows = model.layer_rows(state[k])
        assert not rows[0].any() and not rows[3:].any() and rows[1:3].all()
    assert len(OwnedLayers(solver, True).state_arrays(model, opt.init(model.flat))) == 2


def test_each_model_kind_has_its_adapter():
    assert adapter_for(TrainConfig(**SMALL)) is GRUAdapter
    assert adapter_for(TrainConfig(**NESTED)) is ODENetAdapter
    s = NestedSchedule(TrainConfig(**NESTED))
    assert ODENetAdapter.time_axes(s, 99) == [2, 4, 8] and GRUAdapter.time_axes(s, 99) == [99]
    assert GRUAdapter.grad_options == {"scaled": True} and ODENetAdapter.grad_options == {}
    solver = types.SimpleNamespace(tc=types.SimpleNamespace(size=2))
    assert ODENetAdapter.splits_layers(solver) and not GRUAdapter.splits_layers(solver)
    model = ODENet(2, 3, 2, 2, seed=0)
    assert ODENetAdapter.record_fields(model, s) == dict(depth=2, level=2)
    assert GRUAdapter.record_fields(model, s) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build_model(TrainConfig(**NESTED), 2, 2, depth=4)
    assert isinstance(m, ODENet) and m.depth == 4
