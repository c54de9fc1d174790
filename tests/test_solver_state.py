"""Solver state made explicit: ``make_solver(config, comm, state)``, :class:`SolverState` (warm
starts, MGRIT's ``tol_scale``) handed in and out and through checkpoint arrays, the capability
checks (``supports`` / ``check``), the communicator no longer part of a config, and the
tolerances named by their norm (MGRIT's ``atol_l2`` / ``rtol_l2``)."""
import warnings

import numpy as np
import pytest

from mgritnn.cells import get_cell
from mgritnn.cells.odenet import ODENetCell
from mgritnn.distributed import SelfComm
from mgritnn.errors import ConfigError, MgritnnWarning
from mgritnn.solvers import (SOLVERS, DEERConfig, DEERSolver, MGRITConfig, MGRITSolver,
                             SerialConfig, SerialSolver, SolverState, get_solver, make_config,
                             make_solver)

from helpers import gru_problem


# -- SolverState ---------------------------------------------------------------------------------

def test_state_round_trips_through_arrays_bit_for_bit():
    rng = np.random.default_rng(0)
    st = SolverState(warm={(8, 3): rng.normal(size=(2, 4)), (8, 1): rng.normal(size=(2, 4))},
                     scalars={"tol_scale": 0.25},
                     parts={"deer": SolverState(warm={(5, 0): rng.normal(size=(1, 5, 2))}),
                            "serial": SolverState()})
    arrays = st.to_arrays()
    assert sorted(arrays) == ["deer/keys", "deer/states", "keys", "states", "tol_scale"]
    assert arrays["keys"].tolist() == [[8, 1], [8, 3]] and arrays["keys"].dtype == np.int64
    back = SolverState.from_arrays(arrays)
    assert back.scalars == {"tol_scale": 0.25} and sorted(back.warm) == [(8, 1), (8, 3)]
    for k, v in st.warm.items():
        assert back.warm[k].tobytes() == v.tobytes()
    assert back.parts["deer"].warm[(5, 0)].tobytes() == st.parts["deer"].warm[(5, 0)].tobytes()
    assert SolverState().to_arrays() == {} and not SolverState()
    assert not SolverState.from_arrays({}) and not SolverState.from_arrays(None)
    with pytest.raises(ConfigError, match="do not fit"):
        SolverState.from_arrays({"keys": arrays["keys"][:1], "states": arrays["states"]})
    with pytest.raises(ConfigError, match="do not fit"):
        SolverState.from_arrays({"keys": arrays["keys"]})


def test_tol_scale_is_part_of_the_state_and_stored_only_off_its_default():
    s = make_solver(MGRITConfig())
    assert s.tol_scale == 1.0 and s.warm_arrays() == {}
    s.tol_scale = 0.5
    assert s.state.scalars == {"tol_scale": 0.5}
    assert s.warm_arrays()["tol_scale"].tolist() == [0.5]
    t = make_solver(MGRITConfig(), None, SolverState.from_arrays(s.warm_arrays()))
    assert t.tol_scale == 0.5
    t.tol_scale = 1.0
    assert t.state.scalars == {} and t.warm_arrays() == {}


def test_solvers_refuse_a_state_they_do_not_keep():
    with pytest.raises(ConfigError, match="keeps no warm-start states"):
        SerialSolver().load_state(SolverState(warm={(1, 0): np.zeros(1)}))
    with pytest.raises(ConfigError, match="keeps no tol_scale"):
        make_solver(DEERConfig(), state=SolverState(scalars={"tol_scale": 2.0}))
    with pytest.raises(ConfigError, match="must be a SolverState"):
        SerialSolver().load_state({"keys": np.zeros((1, 2))})


@pytest.mark.parametrize("config", [
    MGRITConfig(initial_guess="warm", max_iter=1, adjoint_max_iter=1),
    DEERConfig(initial_guess="warm", atol=1e-3, rtol=0.0)], ids=["mgrit", "deer"])
def test_a_state_handed_to_a_new_solver_continues_bit_for_bit(config):
    """The state a solver updated (``solver.state``), handed to a new solver
    (``make_solver(config, comm, state)``), continues as the old solver does; it is the very
    object the caller holds, updated in place by the solves."""
    m, X, y = gru_problem(L=2, T=48, B=4)
    keys = np.arange(4)
    old = make_solver(config)
    m.loss_and_grad_flat(X[:3], y[:3], old, keys=keys[:3])
    held = old.state
    assert sorted(held.warm) == [(48, 0), (48, 1), (48, 2)]
    copy = SolverState.from_arrays(held.to_arrays())          # what a checkpoint restores
    new = make_solver(config, SelfComm(), state=copy)
    assert new.state is copy
    m.flat[:] *= 1.01
    l_old, g_old, _ = m.loss_and_grad_flat(X, y, old, keys=keys)
    l_new, g_new, _ = m.loss_and_grad_flat(X, y, new, keys=keys)
    assert l_new == l_old and np.array_equal(g_new, g_old)
    assert old.state is held and (48, 3) in held.warm and (48, 3) in copy.warm
    cold = make_solver(config)
    assert m.loss_and_grad_flat(X, y, cold, keys=keys)[0] != l_old


# -- make_solver and its older spellings ------------------------------------------------------------

def test_make_solver_takes_a_config_a_name_or_a_solver_and_the_old_spellings():
    assert SOLVERS["serial"].config is SerialConfig and make_config("serial") == SerialConfig()
    assert make_solver is get_solver
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = make_solver(MGRITConfig(levels=2, cf=2), SelfComm())
        assert isinstance(s, MGRITSolver) and s.size == 1 and s.config == MGRITConfig(levels=2,
                                                                                        cf=2)
        assert isinstance(make_solver(SerialConfig(), SelfComm()), SerialSolver)
        assert isinstance(make_solver("serial"), SerialSolver)
        # the trainer's spelling: make_solver(name, options, comm)
        old = make_solver("mgrit", {"levels": 2, "cf": 2}, SelfComm())
        assert old.config == MGRITConfig(levels=2, cf=2)
        assert make_solver("quasi-deer", None, SelfComm()).config == DEERConfig(quasi=True)
        assert get_solver("deer", options={"max_iter": 3}).config == DEERConfig(max_iter=3)
        assert make_solver(old) is old
        assert isinstance(MGRITConfig().make_solver(), MGRITSolver)
    with pytest.raises(ConfigError, match="takes no options"):
        make_solver("serial", {"levels": 2})
    with pytest.raises(ConfigError, match="go with a solver's name"):
        make_solver(MGRITConfig(), {"levels": 2})
    with pytest.raises(ConfigError, match="unknown solver"):
        make_solver("lstm")


class _TwoRanks:
    """A stand-in communicator of two ranks (only its size is read)."""

    def Get_size(self):
        return 2

    def Get_rank(self):
        return 0


def test_a_one_rank_solver_refuses_several_ranks():
    with pytest.raises(ConfigError, match="runs on one rank of time"):
        make_solver("serial", None, _TwoRanks())
    with pytest.raises(ConfigError, match="runs on one rank of time"):
        make_solver(SerialConfig(), _TwoRanks())


def test_a_communicator_inside_a_config_is_deprecated_but_still_used():
    comm = SelfComm()
    with pytest.warns(DeprecationWarning, match=r"MGRITConfig\(comm=...\) is deprecated"):
        cfg = MGRITConfig(levels=2, comm=comm)
    assert cfg == MGRITConfig(levels=2) and "comm" not in repr(cfg)
    assert cfg.make_solver().comm is comm
    with pytest.warns(DeprecationWarning, match=r"DEERConfig\(comm=...\) is deprecated"):
        DEERConfig(comm=comm)


def test_the_model_keeps_its_solvers_by_config_value_and_communicator():
    m, X, y = gru_problem(T=12)
    cfg = MGRITConfig(levels=2, cf=2)
    a = m._solver(cfg)
    assert m._solver(MGRITConfig(levels=2, cf=2)) is a and m._solver("mgrit") is not a
    with pytest.warns(DeprecationWarning):
        one, two = MGRITConfig(levels=2, cf=2, comm=SelfComm()), MGRITConfig(levels=2, cf=2,
                                                                              comm=SelfComm())
    b, c = m._solver(one), m._solver(two)
    assert b is not a and c is not b and m._solver(one) is b
    s = make_solver(cfg)
    assert m._solver(s) is s


# -- capabilities --------------------------------------------------------------------------------

def test_each_solver_says_what_a_cell_lacks():
    gru, ode = get_cell("classic"), ODENetCell()
    for name in ("serial", "mgrit", "deer", "quasi-deer"):
        assert make_solver(name).supports(gru) == [], name
    assert make_solver("serial").supports(ode) == [] and make_solver("mgrit").supports(ode) == []
    lacks = make_solver("deer").supports(ode)
    assert lacks == ["LayerNewton (layer_step, layer_step_vjp, layers_cache)"]
    assert "coarse cell" in make_solver(MGRITConfig(coarse_cell="matched")).supports(ode)[0]


def test_deer_refuses_an_odenet_when_it_first_meets_it():
    from mgritnn.odenet import ODENet
    m = ODENet(3, 4, 2, 6, seed=0)
    X, y = np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 1, 0, 1, 1])
    for spec in ("deer", DEERConfig(quasi=True), DEERSolver()):
        with pytest.raises(ConfigError, match="solver 'deer' cannot run the 'odenet' cell: it "
                                              "lacks LayerNewton \\(layer_step.*--solver serial "
                                              "or mgrit"):
            m.loss_and_grad_flat(X, y, spec)
    with pytest.raises(ConfigError, match="LayerNewton"):
        DEERSolver().forward(m.cell, m.cell.weights(m.dtype), m.params["layers"],
                             np.zeros((5, 4)), 1.0, keep=False)
    with pytest.raises(ConfigError, match="coarse_cell 'matched' needs a classic or implicit"):
        m.loss_and_grad_flat(X, y, MGRITConfig(coarse_cell="matched", levels=2, cf=2))


# -- tolerances named by their norm ----------------------------------------------------------------

@pytest.mark.parametrize("old, new", [("atol", "atol_l2"), ("rtol", "rtol_l2"),
                                      ("tol", "atol_l2")])
def test_mgrit_tolerances_say_their_norm_and_take_the_old_names(old, new):
    with pytest.warns(MgritnnWarning, match=f"'{old}' is deprecated: use '{new}'"):
        cfg = MGRITConfig(**{old: 1e-7})
    assert cfg == MGRITConfig(**{new: 1e-7}) and getattr(cfg, new) == 1e-7
    with pytest.warns(MgritnnWarning):
        assert make_solver("mgrit", {old: 1e-7}).config == cfg
    assert MGRITConfig.preset("train").atol_l2 == 0.0
    # DEER and the Newton cell keep atol (and DEER rtol): a bound on every element
    assert DEERConfig(atol=1e-7).atol == 1e-7
