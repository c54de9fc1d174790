"""The training loop: it learns, checkpoints are atomic, resume is bit for bit, bad runs stop cleanly."""
import json

import numpy as np
import pytest

from mgritnn.errors import CheckpointError, ConfigError, MgritnnError, MgritnnWarning
from mgritnn.io import read_npz
from mgritnn.train import TrainConfig, train


def quiet(*_):
    pass


def test_default_data_set_is_learned():
    """Stated accuracy: the defaults (1 layer, hidden 32, Adam 3e-3, 15 epochs) reach >= 95 % test
    accuracy on the embedded set (99-100 % measured); chance is 25 %."""
    _, hist = train(TrainConfig(), out=quiet, progress=False)
    assert hist[-1]["test_acc"] >= 0.95
    assert hist[-1]["loss"] < hist[0]["loss"]


@pytest.mark.parametrize("cell, solver", [
    ("classic", {}), ("implicit", {}),
    # solvers that remember each sample's states between epochs: the checkpoint holds them
    ("classic", dict(solver="mgrit", solver_options=dict(preset="fast"))),
    ("classic", dict(solver="deer", solver_options=dict(initial_guess="warm", atol=1e-3))),
], ids=["classic", "implicit", "mgrit-warm", "deer-warm"])
def test_resume_is_bit_for_bit(tmp_path, cell, solver):
    common = dict(epochs=3, hidden=8, seq_len=24, batch_size=64, max_batches=6, cell=cell,
                  optimizer="adam", seed=3, **solver)
    full_ck, part_ck = tmp_path / "full.npz", tmp_path / "part.npz"
    m_full, h_full = train(TrainConfig(checkpoint=str(full_ck), **common), out=quiet, progress=False)
    train(TrainConfig(checkpoint=str(part_ck), **{**common, "epochs": 2}), out=quiet, progress=False)
    m_res, h_res = train(TrainConfig(checkpoint=str(part_ck), resume=True, **common), out=quiet,
                         progress=False)
    assert np.array_equal(m_full.flat, m_res.flat)
    a, ma = read_npz(full_ck)
    b, mb = read_npz(part_ck)
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert ma["rng"] == mb["rng"] and ma["epoch"] == mb["epoch"] == 3
    assert [r["loss"] for r in h_full] == [r["loss"] for r in h_res]


def test_sgd_and_clip_and_log(tmp_path):
    log = tmp_path / "log.jsonl"
    _, hist = train(TrainConfig(epochs=2, hidden=8, seq_len=16, optimizer="sgd", lr=0.05, clip=1.0,
                                max_batches=3, log=str(log)), out=quiet, progress=False)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    for key in ("loss", "train_acc", "test_acc", "seconds", "time", "step_evals_per_rank"):
        assert key in recs[0]
    assert set(recs[0]["time"]) == {"data", "forward", "adjoint", "wait", "optimizer"}


def test_resume_into_another_model_shape_is_refused(tmp_path):
    ck = tmp_path / "ck.npz"
    train(TrainConfig(epochs=1, hidden=8, seq_len=16, max_batches=2, checkpoint=str(ck)), out=quiet,
          progress=False)
    with pytest.raises(CheckpointError, match="hidden"):
        train(TrainConfig(epochs=2, hidden=9, seq_len=16, max_batches=2, checkpoint=str(ck),
                          resume=True), out=quiet, progress=False)


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    """Saturating gates keep even absurd learning rates finite, so the NaN is injected at batch 2;
    the checkpoint of the last good epoch stays as it was."""
    from mgritnn.model import GRUClassifier
    ck = tmp_path / "ck.npz"
    cfg = TrainConfig(epochs=2, hidden=8, seq_len=16, max_batches=4, checkpoint=str(ck))
    train(TrainConfig(**{**cfg.__dict__, "epochs": 1}), out=quiet, progress=False)
    before = ck.read_bytes()
    real = GRUClassifier.loss_and_grad_flat
    calls = []

    def poisoned(self, X, y, solver="serial", keys=None, **kw):     # kw: lengths, pad
        loss, g, info = real(self, X, y, solver, keys, **kw)
        calls.append(1)
        return (float("nan") if len(calls) == 2 else loss), g, info
    monkeypatch.setattr(GRUClassifier, "loss_and_grad_flat", poisoned)
    with pytest.raises(MgritnnError, match="NaN/inf at epoch 2, batch 2"):
        train(TrainConfig(**{**cfg.__dict__, "resume": True}), out=quiet, progress=False)
    assert ck.read_bytes() == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden=0), "hidden"), (dict(lr=-1.0), "lr"), (dict(resume=True), "checkpoint"),
    (dict(clip=0.0), "clip"), (dict(seq_len=0), "seq_len"),
    (dict(lengths="drop"), "lengths must be one of 'use', 'ignore', got 'drop'"),
    (dict(pad=None), "pad must be one of 'end', 'front', got None"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_mgrit_training_logs_per_batch_diagnostics(tmp_path):
    log = tmp_path / "log.jsonl"
    _, hist = train(TrainConfig(epochs=2, hidden=8, seq_len=32, max_batches=3, solver="mgrit",
                                solver_options=dict(levels=2, cf=4), log=str(log)),
                    out=quiet, progress=False)
    lines = [json.loads(line) for line in log.read_text().splitlines()]   # strict JSON (no NaN)
    batches = [r for r in lines if r["type"] == "batch"]
    assert len(batches) == 6 and len([r for r in lines if r["type"] == "epoch"]) == 2
    b = batches[0]
    assert b["forward_iterations"] == 2 and b["adjoint_iterations"] == 1
    assert b["forward_residual"] > 0 and b["adjoint_residual"] > 0
    assert hist[-1]["step_evals_per_rank"]["forward"] > 0 and hist[-1]["solver"] == "mgrit"


def test_mgrit_tight_training_equals_serial_training():
    """With exact MGRIT solves, a float64 training run gives the serial run's parameters."""
    common = dict(epochs=2, hidden=6, seq_len=20, max_batches=3, dtype="float64")
    m_s, _ = train(TrainConfig(**common), out=quiet, progress=False)
    m_m, _ = train(TrainConfig(solver="mgrit", solver_options=dict(
        levels=2, cf=4, max_iter=30, adjoint_max_iter=30, atol=1e-14), **common), out=quiet, progress=False)
    np.testing.assert_allclose(m_m.flat, m_s.flat, rtol=1e-9, atol=1e-12)


def test_bad_solver_options():
    with pytest.raises(ConfigError, match="bad option"):
        train(TrainConfig(solver="mgrit", solver_options=dict(levelz=2)), out=quiet, progress=False)
    with pytest.raises(ConfigError, match="no options"):
        train(TrainConfig(solver="serial", solver_options=dict(levels=2)), out=quiet, progress=False)


def test_mgrit_warm_start_lowers_the_residual_in_training(tmp_path):
    """Epoch 2 revisits every sample: started from their epoch-1 trajectories, the forward solves
    end with far smaller residuals than from zero (measured: median 0.05 against 0.84)."""
    med = {}
    for guess in ("zero", "warm"):
        log = tmp_path / f"{guess}.jsonl"
        train(TrainConfig(epochs=2, hidden=8, seq_len=32, solver="mgrit", log=str(log),
                          solver_options=dict(levels=2, cf=4, initial_guess=guess)),
              out=quiet, progress=False)
        recs = [json.loads(line) for line in log.read_text().splitlines()]
        med[guess] = np.median([r["forward_residual"] for r in recs
                                if r["type"] == "batch" and r["epoch"] == 2])
    assert med["warm"] < 0.2 * med["zero"], med


def test_implicit_newton_training_reports_its_newton_counters():
    """Training with the fully implicit cell records, per epoch, how many row solves Newton did,
    how many updates and how many did not converge; a run that cannot converge says so."""
    lines = []
    common = dict(epochs=1, hidden=6, seq_len=16, batch_size=32, max_batches=2, cell="implicit-newton")
    _, hist = train(TrainConfig(**common), out=lines.append, progress=False)
    nw = hist[0]["newton"]
    assert nw["solves"] > 0 and nw["iterations"] >= nw["solves"] and nw["unconverged"] == 0
    assert not any("warning" in line for line in lines)
    with pytest.warns(RuntimeWarning, match="implicit-newton"):
        _, hist = train(TrainConfig(dt=200.0, **common), out=lines.append, progress=False)
    assert hist[0]["newton"]["unconverged"] > 0          # float32 at dt = 200: G rounds above 1e-5
    assert any("did not reach the tolerance" in line for line in lines)


@pytest.mark.parametrize("solver", ["deer", "quasi-deer", "auto"])
def test_deer_training_equals_serial_training(solver):
    """DEER/quasi-DEER at a tight tolerance and auto (exact routes only) train like the serial
    solver: the same losses to round-off over two epochs."""
    common = dict(epochs=2, hidden=6, seq_len=20, batch_size=32, max_batches=3, dtype="float64")
    _, ref = train(TrainConfig(**common), out=quiet, progress=False)
    opts = {} if solver == "auto" else dict(atol=1e-12, rtol=0.0)
    _, got = train(TrainConfig(solver=solver, solver_options=opts, **common), out=quiet,
                   progress=False)
    rtol = 1e-6 if solver == "auto" else 1e-10
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=rtol)


def test_checkpoint_is_never_written_with_nonfinite_values(tmp_path):
    """save_checkpoint, the one writer of training checkpoints, refuses NaN/inf parameters,
    optimizer state or epoch losses with a DivergenceError and leaves the last checkpoint."""
    from mgritnn import datasets
    from mgritnn.errors import DivergenceError
    from mgritnn.model import GRUClassifier
    from mgritnn.optim import make_optimizer
    from mgritnn.train import save_checkpoint
    ck = tmp_path / "ck.npz"
    cfg = TrainConfig(epochs=2, hidden=4, seq_len=8, max_batches=1, checkpoint=str(ck))
    train(TrainConfig(**{**cfg.__dict__, "epochs": 1}), out=quiet, progress=False)
    before = ck.read_bytes()
    ds = datasets.load("default", seq_len=8)
    std = datasets.Standardizer.fit(ds.X_train)
    rng = np.random.default_rng(0)

    def attempt(poison):
        model = GRUClassifier(ds.X_train.shape[2], 4, ds.num_classes, seed=0)
        state = make_optimizer("adam").init(model.flat)
        history = [dict(loss=1.0, test_loss=1.0)]
        poison(model, state, history)
        with pytest.raises(DivergenceError, match=r"epoch 2\b.*NaN/inf.*keeps epoch 1"):
            save_checkpoint(cfg, 2, model, state, std, rng, history, ds)
        assert ck.read_bytes() == before

    attempt(lambda m, s, h: m.flat.__setitem__(0, np.inf))
    attempt(lambda m, s, h: s.v.__setitem__(3, np.nan))
    attempt(lambda m, s, h: h[-1].__setitem__("test_loss", float("nan")))


def test_resume_names_changed_settings_in_one_warning(tmp_path):
    """Resuming with another lr and solver options warns once, naming each; more epochs alone
    does not warn (and stays bit for bit, see test_resume_is_bit_for_bit)."""
    import warnings

    from mgritnn.errors import MgritnnWarning
    ck = tmp_path / "ck.npz"
    common = dict(hidden=4, seq_len=16, max_batches=1, checkpoint=str(ck))
    train(TrainConfig(epochs=1, **common), out=quiet, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MgritnnWarning)
        train(TrainConfig(epochs=2, resume=True, threads=1, **common), out=quiet, progress=False)
    with pytest.warns(MgritnnWarning) as got:
        train(TrainConfig(epochs=3, resume=True, lr=0.01, solver="mgrit",
                          solver_options=dict(levels=3, cf=(2, 2)), **common),
              out=quiet, progress=False)
    assert len(got) == 1
    msg = str(got[0].message)
    assert msg.startswith("resuming with settings that differ from the checkpoint: ")
    assert 'lr 0.003 -> 0.01, solver serial -> mgrit, solver_options {} -> {"cf": [2, 2], ' \
           '"levels": 3}' in msg, msg


def test_resume_drops_an_incomplete_last_log_record(tmp_path):
    """A run killed while writing its log leaves an incomplete last line: the resumed run drops
    it (it is one of ours), so every line of the log is a JSON record."""
    ck, log = tmp_path / "ck.npz", tmp_path / "log.jsonl"
    common = dict(hidden=4, seq_len=8, max_batches=1, checkpoint=str(ck), log=str(log))
    train(TrainConfig(epochs=1, **common), out=quiet, progress=False)
    with open(log, "a") as f:
        f.write('{"type": "epoch", "epoch": 2, "lo')
    train(TrainConfig(epochs=2, resume=True, **common), out=quiet, progress=False)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    other = tmp_path / "notes.txt"                  # not one of ours: ended, not dropped
    other.write_text("my notes")
    train(TrainConfig(epochs=1, hidden=4, seq_len=8, max_batches=1, log=str(other)), out=quiet,
          progress=False)
    lines = other.read_text().splitlines()
    assert lines[0] == "my notes" and json.loads(lines[1])["epoch"] == 1


def test_warm_states_of_another_rank_count_start_cold_with_a_warning(tmp_path):
    """A checkpoint's warm-start states fit a run on as many ranks; on another count they are
    not used, and one warning says so (the run continues, no longer bit for bit)."""
    from mgritnn.io import atomic_savez
    ck = tmp_path / "ck.npz"
    common = dict(hidden=8, seq_len=24, batch_size=64, max_batches=2, solver="mgrit",
                  solver_options=dict(preset="fast"), checkpoint=str(ck))
    train(TrainConfig(epochs=1, **common), out=quiet, progress=False)
    arrays, meta = read_npz(ck)
    assert any(k.startswith("warm/r0/") for k in arrays) and meta["warm_ranks"] == 1
    atomic_savez(ck, arrays, dict(meta, warm_ranks=2))
    with pytest.warns(MgritnnWarning, match="warm-start states of 2 ranks, this run has 1"):
        train(TrainConfig(epochs=2, resume=True, **common), out=quiet, progress=False)


def test_a_diverged_solve_never_reaches_the_optimizer():
    """An MGRIT solve that diverges (an explicit coarse cell at a huge coarse step): by default the
    serial sweep redoes the step (counted as rescued; the parameters are the serial run's); with
    rescue=False the run stops with SolverError naming the epoch and batch and what was kept,
    before any update with its gradient."""
    from mgritnn.errors import SolverError
    settings = dict(epochs=1, hidden=8, seq_len=256, batch_size=8, max_batches=1, dt=6.0,
                    dtype="float64", gradient_check=0, solver="mgrit",
                    solver_options=dict(levels=3, cf=8, coarse_cell="classic", max_iter=6,
                                        atol_l2=0.0))
    model, hist = train(TrainConfig.from_settings(settings), out=quiet, progress=False)
    assert hist[0]["rescued"]["steps"] == 1 and "diverged" in hist[0]["rescued"]["first"]
    serial, _ = train(TrainConfig.from_settings(dict(settings, solver="serial",
                                                     solver_options={})),
                      out=quiet, progress=False)
    np.testing.assert_allclose(model.flat, serial.flat, rtol=1e-12, atol=1e-14)
    with pytest.raises(SolverError, match="epoch 1, batch 1: the mgrit forward solve failed.*"
                                          "nothing was saved: no epoch had finished"):
        train(TrainConfig.from_settings(dict(settings, rescue=False)), out=quiet, progress=False)


def write_padded_npz(path, N=12, M=6, T=9, C=2, classes=3, seed=0):
    """A .npz of sequences zero-padded at the end after random true lengths 1..T; returns
    (path, the arrays)."""
    rng = np.random.default_rng(seed)
    d = {}
    for split, n in (("train", N), ("test", M)):
        L = rng.integers(1, T + 1, n)
        L[0] = T
        X = rng.normal(3.0, 2.0, size=(n, T, C)) * (np.arange(T)[:, None] < L[:, None, None])
        d.update({f"X_{split}": X.astype(np.float32), f"y_{split}": np.arange(n) % classes,
                  f"len_{split}": L})
    np.savez(path, **d)
    return str(path), d


def test_the_trainer_keeps_the_lengths_and_standardizes_on_the_real_steps(tmp_path):
    """lengths="use" (default): the standardizer is fitted on the real steps, the padding stays 0,
    every batch carries its rows' lengths; pad="front" right-aligns before standardizing;
    lengths="ignore" warns and drops them (the padding then counts, as before lengths existed)."""
    import warnings

    from mgritnn import datasets
    from mgritnn.train import Trainer
    path, d = write_padded_npz(tmp_path / "var.npz")
    common = dict(data=path, epochs=1, hidden=4, batch_size=5, max_batches=2)
    for pad in ("end", "front"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", MgritnnWarning)
            t = Trainer(TrainConfig(pad=pad, **common), out=quiet, progress=False)
        with t:
            X = d["X_train"] if pad == "end" else datasets.pad_front(d["X_train"], d["len_train"])
            std = datasets.Standardizer.fit(X, d["len_train"], pad)
            np.testing.assert_array_equal(t.len_train, d["len_train"])
            np.testing.assert_array_equal(t.len_test, d["len_test"])
            assert t.standardizer.mean.tobytes() == std.mean.tobytes()
            assert t.X_train.tobytes() == std.transform(X, np.float32, d["len_train"],
                                                        pad).tobytes()
            assert not t.X_test[~datasets.real_steps(d["len_test"], 9, pad)].any()
            for batch in t.batches(0):
                np.testing.assert_array_equal(batch.lengths, d["len_train"][batch.part])
                assert batch.lengths.dtype == np.int64
            t.fit()
    with pytest.warns(datasets.DataWarning, match="ignored"):
        t = Trainer(TrainConfig(lengths="ignore", **common), out=quiet, progress=False)
    with t:
        assert t.len_train is None and t.len_test is None
        std = datasets.Standardizer.fit(d["X_train"])
        assert t.standardizer.mean.tobytes() == std.mean.tobytes()
        assert all(batch.lengths is None for batch in t.batches(0))


def test_data_without_lengths_trains_as_before(tmp_path):
    """Data without lengths: no lengths anywhere, the standardizer of all steps."""
    from mgritnn import datasets
    from mgritnn.train import Trainer
    cfg = TrainConfig(epochs=1, hidden=4, seq_len=8, max_batches=1, pad="front")
    with Trainer(cfg, out=quiet, progress=False) as t:
        assert t.len_train is None and t.len_test is None
        assert next(t.batches(0)).lengths is None
        ds = datasets.load("default", seq_len=8)
        assert t.X_train.tobytes() == datasets.Standardizer.fit(ds.X_train).transform(
            ds.X_train).tobytes()
