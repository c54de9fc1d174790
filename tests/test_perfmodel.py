"""The performance model: its counts are the solver's, its arithmetic is hand-checkable, its
calibration cache is written atomically and reused, and ``mgritnn plan`` runs end to end."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import mgritnn
from mgritnn import plan as pm
from mgritnn.plan import calibration as pm_calibrate
from mgritnn.plan import costs as pm_costs
from mgritnn.plan import model as pm_model
from mgritnn.distributed import TimeComm
from mgritnn.distributed.comm import SelfComm
from mgritnn.errors import ConfigError
from mgritnn.solvers import DEERConfig, MGRITConfig, make_solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (T, MGRITConfig fields): levels, cf (also per level), relax (also per level), F-cycles,
#: cycle counts, the first down-leg done or skipped, one level.
CASES = [(37, dict(levels=3, cf=4, relax="FCF", max_iter=2)),
         (64, dict(levels=2, cf=4, relax="F", max_iter=1)),
         (50, dict(levels=3, cf=(2, 3), relax=("F", "FCF"), max_iter=3, adjoint_max_iter=2)),
         (40, dict(levels=1)),
         (45, dict(levels=3, cf=3, cycle="F", max_iter=2, skip_first_down=False)),
         (90, dict(levels=4, cf=3, relax="FCF", max_iter=2, adjoint_max_iter=2))]


def _solver_phases(stats):
    return {k: [v[1], v[2]] for k, v in stats.phases.items()}


@pytest.mark.parametrize("T,fields", CASES)
def test_counts_equal_the_solvers_on_one_process(T, fields):
    """Every phase's calls and step evaluations, and step_evals, as a real training step's
    forward and adjoint solves report them (atol 0: no cycle stops early)."""
    cfg = MGRITConfig(atol_l2=0.0, **fields)
    m = mgritnn.GRUClassifier(3, 4, 2, num_layers=2, cell="implicit", dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    _, _, info = m.loss_and_grad_flat(rng.normal(size=(2, T, 3)), np.array([0, 1]), cfg,
                                      strict=False)
    for solve, cycles in (("forward", cfg.max_iter), ("adjoint", cfg.adjoint_max_iter)):
        stats = info[solve]
        assert stats.iterations == (1 if cfg.levels == 1 else cycles)
        ops = pm.mgrit_solve_ops(T, cfg, 1, 0, solve)
        assert pm.phase_counts(ops) == _solver_phases(stats)
        assert sum(o.evals for o in ops) == stats.step_evals
    ops = pm.step_ops((2, T, 3, 4, 2), "mgrit", 1, dict(config=cfg))[0]
    assert pm.step_evals(ops) == (info["forward"].step_evals, info["adjoint"].step_evals)


class _RankComm(SelfComm):
    """Rank ``rank`` of ``size`` on one process (for the solver's rank, size and grid)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


class _GhostComm(TimeComm):
    """The time communication of one rank of several on one process: a message from the
    previous rank arrives as 0.1 everywhere (the values are wrong, but not zero, so that no
    solve converges on a zero residual), sends are dropped; a maximum over the ranks is at
    least 1 (the adjoint's scale, max |lambda_N|, lives on the last rank)."""

    def shift(self, send, recv, kind, index=0, reverse=False):
        if self._ends(reverse)[0] is not None:
            recv[...] = 0.1
        return 0.0

    def recv_prev(self, buf, kind, index=0, reverse=False):
        return self.shift(None, buf, kind, index, reverse)

    def send_next(self, buf, kind, index=0, reverse=False):
        pass

    def allreduce(self, values, op="sum"):
        return np.maximum(values, 1.0) if op == "max" else np.array(values)


@pytest.mark.parametrize("P", [2, 3])
@pytest.mark.parametrize("T,fields", [CASES[0], CASES[2], CASES[5]])
def test_counts_per_rank_equal_the_solvers_rank_by_rank(P, T, fields):
    """Each rank's solve, run on one process on that rank's grid: the same counts."""
    m = mgritnn.GRUClassifier(3, 4, 2, num_layers=1, cell="implicit", dtype="float64", seed=0)
    w = m.weights()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, 2, 3))
    h0 = np.zeros((1, 2, 4))
    for r in range(P):
        cfg = MGRITConfig(atol_l2=0.0, **fields)
        solver = make_solver(cfg, _RankComm(r, P))
        solver.tc = _GhostComm(_RankComm(r, P))
        lo, hi = solver.local_steps(T)
        _, state, fs = solver.forward(m.cell, w, x[lo:hi], h0, T=T)
        lam = 0.1 * np.ones((1, 2, 4)) if r == P - 1 else None
        _, bs = solver.adjoint(m.cell, w, state, lam, m.cell.zero_grads(w))
        for solve, stats in (("forward", fs), ("adjoint", bs)):
            assert stats.iterations == getattr(cfg, {"forward": "max_iter",
                                                     "adjoint": "adjoint_max_iter"}[solve])
            ops = pm.mgrit_solve_ops(T, cfg, P, r, solve)
            assert pm.phase_counts(ops) == _solver_phases(stats), (r, solve)
            assert sum(o.evals for o in ops) == stats.step_evals


def test_deer_and_serial_step_evals_equal_the_solvers():
    T, B = 12, 2
    m = mgritnn.GRUClassifier(3, 4, 2, num_layers=1, cell="implicit", dtype="float64", seed=0)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(B, T, 3)), np.array([0, 1])
    for route, cfg in (("deer", DEERConfig()), ("quasi-deer", DEERConfig(quasi=True))):
        _, _, info = m.loss_and_grad_flat(X, y, cfg)
        ops = pm.step_ops((B, T, 3, 4, 1), route, 1,
                          dict(deer_iters=info["forward"].iterations,
                               adjoint_iters=info["adjoint"].iterations))[0]
        assert pm.step_evals(ops) == (info["forward"].step_evals, info["adjoint"].step_evals)
    _, _, info = m.loss_and_grad_flat(X, y, "serial")
    ops = pm.step_ops((B, T, 3, 4, 1), "serial", 1)[0]
    assert pm.step_evals(ops) == (info["forward"].step_evals, info["adjoint"].step_evals)


def test_every_rank_sweeps_its_own_steps_once_in_the_final_sweep():
    cfg = MGRITConfig.preset("paper")
    T, P = 1000, 4
    finals = [pm.phase_counts(pm.mgrit_solve_ops(T, cfg, P, r))["final[0]"][1] for r in range(P)]
    assert sum(finals) == T
    coarsest = [pm.phase_counts(pm.mgrit_solve_ops(T, cfg, P, r))["coarsest[2]"] for r in range(P)]
    assert sum(c[1] for c in coarsest) == len(range(0, T, 16)) * cfg.max_iter


# ------------------------------------------------------------------------------------------------
# The arithmetic, by hand
# ------------------------------------------------------------------------------------------------

def _costs(**kw):
    """A hand-made table: every cost 0 unless given, messages 1 s, bandwidth unlimited."""
    base = dict(overhead=0.0, fwd=[[1, 0.0]], vjp=[[1, 0.0]], linear={}, flops_per_s=math.inf,
                adam_s=0.0, latency_s=1.0, bandwidth=math.inf, cores=64)
    base.update(kw)
    return pm.Costs(**base)


def test_serial_time_by_hand():
    """(B, T, I, H, L) = (1, 5, 1, 1, 1), 2 classes: 3 + 3 + 6 GRU and 2 + 2 head parameters.
    forward 1 + 2 x 5 + 30 flops / 30 = 12; BPTT 3 + 4 x 5 + 1 = 24; Adam 16 x 0.5 = 8."""
    assert pm.num_params((1, 5, 1, 1, 1), 2) == mgritnn.GRUClassifier(1, 1, 2).flat.size == 16
    costs = _costs(linear=dict(serial_fwd=[1.0, 2.0], serial_adj=[3.0, 4.0]), flops_per_s=30.0,
                   adam_s=0.5)
    p = pm.predict((1, 5, 1, 1, 1), "serial", 1, 1, dict(classes=2), costs)
    assert p.seconds == 12 + 24 + 8
    assert p.step_evals == [[5, 5]]
    assert p.breakdown["forward serial sweep"] == 12 and p.breakdown["step Adam"] == 8


def test_two_level_mgrit_on_two_ranks_by_hand():
    """T = 8, 2 levels, cf 4, F-relaxation, 1/1 cycles, first down-leg skipped: each rank owns
    one coarse interval of 4 fine steps. Messages cost 1 s (latency), array work and flops 0.

    forward: coarsest pipelined 2 x (1 + 10) + 1 message = 23; ghost exchange 1; final sweep
    (keeping the gates) 1 + 4 x 30 = 121; norm allreduce 1: 146.
    adjoint: scale allreduce 1; coarse linearization 1 + 30 = 31; coarsest 2 x (1 + 20) + 1 = 43;
    exchange 1; final 1 + 4 x 40 = 161; norm allreduce 1; parameter gradients 5 + 0.5 x 4 = 7:
    245. Loss broadcast 1, gradient allreduce 1: 393 in all."""
    cfg = MGRITConfig(levels=2, cf=4, relax="F", max_iter=1, adjoint_max_iter=1)
    costs = _costs(overhead=1.0, fwd=[[1, 10.0]], vjp=[[1, 20.0]], fwd_keep=[[1, 30.0]],
                   vjp_keep=[[1, 40.0]], linear=dict(grad=[5.0, 0.5]))
    p = pm.predict((1, 8, 1, 1, 1), "mgrit", 2, 1, dict(config=cfg), costs)
    assert p.seconds == 393
    assert p.step_evals == [[1 + 4, 1 + 1 + 4]] * 2
    assert p.breakdown["forward coarsest"] == 23
    assert p.breakdown["adjoint final"] == 161


def test_deer_on_two_ranks_by_hand():
    """T = 7 on 2 ranks: 3 and 4 steps, the slower rank counts. 2 iterations of one layer: each
    8 + allgather 1 + boundary 1 + allreduce 1; base 1 + 4 = 5; adjoint 2 + 4 = 6, its allgather
    and boundary 2; loss broadcast and gradient allreduce 2: 5 + 22 + 8 + 2 = 37."""
    costs = _costs(linear=dict(deer_base=[1.0, 1.0], deer_iter=[0.0, 2.0], deer_adj=[2.0, 1.0]))
    p = pm.predict((1, 7, 1, 1, 1), "deer", 2, 1, dict(deer_iters=2), costs)
    assert p.seconds == 37
    assert p.step_evals == [[2 * 3 + 3, 2 * 3], [2 * 4 + 4, 2 * 4]]   # adjoint: scan + gradients


def test_position_time_interpolates_log_log_and_holds_the_rate_beyond():
    table = [[1, 1.0], [4, 4.0], [16, 8.0]]
    assert pm.position_time(table, 2) == pytest.approx(2.0)
    assert pm.position_time(table, 8) == pytest.approx(8.0 ** 0.5 * 2.0)
    assert pm.position_time(table, 32) == 16.0
    assert pm.position_time(table, 4) == 4.0


def test_oversubscription_stretches_the_computation():
    costs = _costs(linear=dict(serial_fwd=[0.0, 1.0], serial_adj=[0.0, 1.0]), cores=2)
    one = pm.predict((1, 4, 1, 1, 1), "serial", 1, 2, {}, costs)
    four = pm.predict((1, 4, 1, 1, 1), "serial", 1, 8, {}, costs)
    assert four.seconds == 4 * one.seconds
    assert any("oversubscribed" in n for n in four.notes)


def test_validate_reads_bench_scaling_points():
    costs = _costs(linear=dict(serial_fwd=[0.0, 1.0], serial_adj=[0.0, 1.0], grad=[0.0, 0.0]))
    recs = [dict(kind="run"),
            dict(kind="point", shape=[2, 4, 1, 1, 1], route="serial", ranks=2, threads=1,
                 data_parallel=2, seconds=4.0, step_evals=[[4, 4], [4, 4]], wait=0.1,
                 oversubscribed=False),
            dict(kind="point", shape=[1, 8, 1, 1, 1], route="mgrit-fast", ranks=2, threads=1,
                 data_parallel=1, seconds=1.0, step_evals=[[0, 0], [0, 0]], wait=0.0,
                 oversubscribed=False)]
    out = pm.validate(recs, costs)
    assert len(out) == 2
    # serial on 2 data groups: 4 + 4 steps, one allreduce of the gradient (1 s): 9 s
    assert out[0]["predicted"] == 9.0 and out[0]["measured"] == 4.0
    assert out[0]["rel_error"] == pytest.approx(9.0 / 4.0 - 1)
    assert out[0]["predicted_step_evals"] == recs[1]["step_evals"]
    assert out[1]["predicted_step_evals"] == pm.predict(
        (1, 8, 1, 1, 1), "mgrit-fast", 2, 1, {}, costs).step_evals


@pytest.mark.parametrize("bad", ["1,2,3", "0,1,1,1,1", "a,b,c,d,e", "1,2,3,4,5,6", "1,-2,1,1,1",
                                 (1, 2, 3, 4, 1.5)])
def test_bad_shapes_are_rejected(bad):
    with pytest.raises(ConfigError, match="five positive integers"):
        pm.parse_shape(bad)


def test_impossible_splits_are_rejected():
    costs = _costs()
    with pytest.raises(ConfigError, match="time ranks but only"):
        pm.predict((1, 3, 1, 1, 1), "deer", 4, 1, {}, costs)
    with pytest.raises(ConfigError, match="does not divide"):
        pm.predict((4, 64, 1, 1, 1), "mgrit-paper", 4, 1, dict(data_parallel=3), costs)
    with pytest.raises(ConfigError, match="unknown route"):
        pm.predict((4, 64, 1, 1, 1), "pipelined", 1, 1, {}, costs)
    with pytest.raises(ConfigError, match="ranks"):
        pm.predict((4, 64, 1, 1, 1), "mgrit-paper", 8, 1, {}, costs)   # 4 coarsest intervals


# ------------------------------------------------------------------------------------------------
# Calibration cache and the command
# ------------------------------------------------------------------------------------------------

def test_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    path = str(tmp_path / "cache" / "perfmodel-test.json")
    calls = []
    real = pm.calibrate

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)
    monkeypatch.setattr(pm_calibrate, "calibrate", counting)
    c1 = pm.load_or_calibrate("implicit", 4, 1, "float32", 1, 2, size="tiny", cache=path)
    assert len(calls) == 1
    data = json.load(open(path))
    assert data["version"] == pm.CACHE_VERSION
    assert list(data["entries"]) == [pm.cache_key("implicit", 4, 1, "float32", 1, 2, "tiny")]
    c2 = pm.load_or_calibrate("implicit", 4, 1, "float32", 1, 2, size="tiny", cache=path)
    assert len(calls) == 1 and c2 == c1
    assert c1.fwd[0][0] == 1 and all(t > 0 for _, t in c1.fwd + c1.vjp)
    assert set(c1.linear) >= {"serial_fwd", "serial_adj", "grad", "deer_iter", "qdeer_iter"}
    # a write that fails at the rename leaves the old file whole and no temporary file behind
    before = open(path).read()

    def broken(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(mgritnn.errors.OutputError, match="calibration cache"):
        pm.write_cache(path, {"x": {}})
    assert open(path).read() == before
    assert os.listdir(os.path.dirname(path)) == ["perfmodel-test.json"]


def test_cache_path_names_the_host(monkeypatch, tmp_path):
    monkeypatch.setenv("MGRITNN_CACHE", str(tmp_path))
    monkeypatch.setattr(pm_costs.socket, "gethostname", lambda: "node/7")
    assert pm.cache_path() == os.path.join(str(tmp_path), "perfmodel-node_7.json")


def _plan(*args, cache):
    env = dict(os.environ, MGRITNN_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "mgritnn", "plan", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_plan_runs_end_to_end_and_calibrates_once(tmp_path):
    args = ["--shape", "4,64,3,8,1", "--ranks", "2", "--calibration-size", "tiny"]
    r = _plan(*args, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    for label in ("| serial |", "serial, data-parallel 2 x 1", "MGRIT paper", "MGRIT fast",
                  "| DEER |", "quasi-DEER", "recommendation:", "vs serial"):
        assert label in r.stdout
    assert "approximate: fixed MGRIT cycle counts" in r.stdout
    assert "calibrating implicit/H8/L1/float32/t1/B4/tiny" in r.stderr
    assert "calibrated implicit/H8/L1/float32/t1/B4/tiny in" in r.stderr
    again = _plan(*args, cache=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "calibrating" not in again.stderr
    assert again.stdout == r.stdout


@pytest.mark.parametrize("args,message", [
    (["--shape", "4,64,3,8"], "five positive integers"),
    (["--shape", "4,64,3,8,1", "--ranks", "0"], "--ranks 0"),
    ([], "give either --shape"),
    (["--shape", "4,64,3,8,1", "--threads", "100000"], "threads=100000"),
    (["--shape", "4,64,3,8,1", "--cores", "0"], "--cores 0"),
])
def test_plan_bad_input_is_a_clear_error(tmp_path, args, message):
    r = _plan(*args, "--calibration-size", "tiny", cache=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("mgritnn: error: ") and message in r.stderr
    assert "Traceback" not in r.stderr


def test_plan_takes_steps_and_inputs_from_a_data_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, X_train=rng.normal(size=(6, 40, 5)).astype(np.float32), y_train=np.arange(6) % 2,
             X_test=rng.normal(size=(2, 40, 5)).astype(np.float32), y_test=np.arange(2))
    r = _plan("--data", str(path), "--batch-size", "3", "--hidden", "8", "--calibration-size",
              "tiny", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(B, T, I, H, L) = (3, 40, 5, 8, 1)" in r.stdout
    both = _plan("--data", str(path), "--shape", "3,40,5,8,1", cache=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr


#: Per-rank step evaluations [forward, adjoint] of real MPI launches (perf/bench_scaling.py,
#: 2026-12-03, ``loss_and_grad_flat`` without keys: MGRIT fast starts cold), on (B, T, I, H, L):
#: (route, ranks, data groups) -> the evaluations of every rank.
MPI_EVALS = {
    ((100, 128, 9, 100, 2), "mgrit-paper", 2, 1): [[276, 100]] * 2,
    ((100, 128, 9, 100, 2), "mgrit-paper", 4, 1): [[138, 50]] * 4,
    ((100, 128, 9, 100, 2), "mgrit-fast", 4, 1): [[40, 48]] * 4,
    ((100, 128, 9, 100, 2), "mgrit-fast", 4, 2): [[80, 96]] * 4,
    ((100, 128, 9, 100, 2), "serial", 4, 4): [[128, 128]] * 4,
    ((4, 16384, 6, 32, 1), "mgrit-paper", 2, 1): [[35328, 12800]] * 2,
    ((4, 16384, 6, 32, 1), "mgrit-paper", 4, 1): [[17664, 6400]] * 4,
    ((4, 16384, 6, 32, 1), "mgrit-fast", 4, 1): [[5120, 6144]] * 4,
}


@pytest.mark.parametrize("key", sorted(MPI_EVALS))
def test_step_evals_per_rank_equal_those_of_mpi_runs(key):
    shape, route, ranks, groups = key
    ops = pm.step_ops(shape, route, ranks, dict(data_parallel=groups))
    got = [list(pm.step_evals(o)) for o in ops]
    assert got * groups == MPI_EVALS[key]


def test_validate_keeps_a_point_without_a_time():
    costs = _costs(linear=dict(serial_fwd=[0.0, 1.0], serial_adj=[0.0, 1.0]))
    out = pm.validate([dict(kind="point", shape=[1, 4, 1, 1, 1], route="serial", ranks=1,
                            threads=1, data_parallel=1, seconds=None)], costs)
    assert out[0]["measured"] is None and out[0]["rel_error"] is None
    assert out[0]["predicted"] == 8.0


def test_plan_assumes_a_core_per_rank_unless_told_otherwise():
    """By default every rank has its own core (a cluster): nothing is stretched. On fewer cores
    (this machine, say) the same MGRIT row is stretched by ranks x threads / cores, and says so."""
    shape = (4, 256, 3, 8, 1)
    costs = _costs(fwd=[[1, 1.0]], vjp=[[1, 1.0]],
                   linear={k: [0.0, 1.0] for k in ("serial_fwd", "serial_adj", "grad", "deer_base",
                                                   "deer_iter", "deer_adj", "qdeer_base",
                                                   "qdeer_iter")})
    own = {r.label: r for r in pm.plan(shape, 4, calibration=costs)}
    two = {r.label: r for r in pm.plan(shape, 4, calibration=costs, cores=2)}
    a, b = own["MGRIT paper"].prediction, two["MGRIT paper"].prediction
    assert not any("oversubscribed" in n for n in a.notes)
    assert any("oversubscribed" in n for n in b.notes)
    assert b.seconds > a.seconds
    with pytest.raises(mgritnn.errors.ConfigError, match="--cores 0"):
        pm.plan(shape, 4, calibration=costs, cores=0)


def test_thread_extrapolation_by_hand():
    """From 1 and 2 threads to 8 by Amdahl per cost: a position of 1 state 1.0 -> 0.6 s means a
    serial fraction 0.2, so 0.2 + 0.8 / 8 = 0.3 s; of 4 states 3.0 -> 1.5 (none): 3 / 8; a
    slower second measurement keeps the first (no gain); linear (1, 2) and (0.5, 1.2): the
    larger intercept 1, the slope 2 (0.2 + 0.1) = 0.6; overheads: the larger."""
    c1 = _costs(overhead=1e-6, fwd=[[1, 1.0], [4, 3.0]], vjp=[[1, 1.0]],
                linear=dict(serial_fwd=[1.0, 2.0]), flops_per_s=1.0, adam_s=1.0)
    c2 = _costs(overhead=3e-6, fwd=[[1, 0.6], [4, 1.5]], vjp=[[1, 1.5]],
                linear=dict(serial_fwd=[0.5, 1.2]), flops_per_s=2.0, adam_s=0.6)
    c8 = pm.extrapolate_threads(c1, c2, 8)
    np.testing.assert_allclose(c8.fwd, [[1, 0.3], [4, 0.375]])
    assert c8.vjp == [[1, 1.0]]
    np.testing.assert_allclose(c8.linear["serial_fwd"], [1.0, 0.6])
    assert c8.overhead == 3e-6 and c8.flops_per_s == 8.0
    np.testing.assert_allclose(c8.adam_s, 0.3)
    assert c8.key["threads"] == 8


def test_more_threads_than_cores_are_extrapolated_and_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("MGRITNN_CACHE", str(tmp_path))
    monkeypatch.setattr(pm_model.os, "cpu_count", lambda: 2)
    seen = []
    real = pm.load_or_calibrate

    def spy(cell, H, L, dtype, threads, batch, *a, **k):
        seen.append(threads)
        return real(cell, H, L, dtype, threads, batch, size="tiny")
    monkeypatch.setattr(pm_model, "load_or_calibrate", spy)
    p = pm.predict((2, 64, 3, 8, 1), "serial", 1, 8, dict(cell="classic", cores=8))
    assert sorted(set(seen)) == [1, 2]
    assert any("extrapolated" in n for n in p.notes) and p.seconds > 0


def test_contention_stretches_the_computation_of_several_processes_only():
    """A measured contention of 2 doubles every computation of a 2-rank prediction (here the
    serial sweep and BPTT of each data group, 5 + 5 s, to 20 s; the data groups' allreduce costs
    its 1 s latency, unstretched) and leaves one process alone."""
    costs = _costs(linear=dict(serial_fwd=[0.0, 1.0], serial_adj=[0.0, 1.0]), contention=2.0)
    one = pm.predict((2, 5, 1, 1, 1), "serial", 1, 1, dict(classes=2), costs)
    two = pm.predict((2, 5, 1, 1, 1), "serial", 2, 1, dict(classes=2, data_parallel=2), costs)
    assert one.seconds == 10 and not any("contention" in n for n in one.notes)
    assert two.seconds == 21 and any("contention" in n for n in two.notes)


def test_contention_is_measured_beside_busy_copies():
    """The measurement itself: a real step timed alone and beside a busy copy in another process
    (one core each); a slowdown, never a speed-up."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: nothing to share")
    m = mgritnn.GRUClassifier(1, 4, 2, cell="implicit", dtype="float32")
    costs = _costs(linear=dict(serial_fwd=[0.0, 1e-5], serial_adj=[0.0, 1e-5]), cores=2)
    c = pm_calibrate._contention(m, 2, np.dtype("float32"), np.random.default_rng(0), costs, limit_s=30.0)
    assert 1.0 <= c < 10.0


def test_the_old_module_name_still_works_with_a_warning():
    """``mgritnn.perfmodel`` is the planner's deprecated name: the same public objects, and a
    DeprecationWarning on import."""
    import importlib
    sys.modules.pop("mgritnn.perfmodel", None)
    with pytest.warns(DeprecationWarning, match="mgritnn.plan"):
        old = importlib.import_module("mgritnn.perfmodel")
    assert old.predict is pm.predict and old.plan is pm.plan and old.Costs is pm.Costs
