"""Helpers of the MPI tests: find ``mpiexec``, launch scripts on P ranks, shared test problems.

This module is imported both by the pytest process (``tests/test_mpi.py``) and by the scripts that
run under ``mpiexec`` (``tests/mpi/*.py``), so it does not import pytest or mpi4py at module level:
the pytest process must not initialize MPI, and the ranks must not need pytest.

The problems are built here, in one place, so that the ranks and the pytest process (which computes
the one-rank reference with ``comm=None``) solve exactly the same thing.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
MPI_SCRIPTS = TESTS_DIR / "mpi"

#: Default wall-time limit of one ``mpiexec`` launch (seconds).
DEFAULT_TIMEOUT = 240.0


# ------------------------------------------------------------------------------------------------
# Launching
# ------------------------------------------------------------------------------------------------

def find_mpiexec():
    """Path of the ``mpiexec`` to use, or None if there is none.

    The one next to ``sys.executable`` comes first: the ``mpich`` wheel installs it into the venv's
    ``bin``, and it is the launcher that matches the MPI library mpi4py loads. Then ``PATH``.
    """
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        p = here / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    for name in ("mpiexec", "mpirun"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _mgritnn_root():
    """The directory holding the ``mgritnn`` package this process imports (the repository root,
    or site-packages when the package is installed and the tests run from elsewhere)."""
    import mgritnn
    return Path(mgritnn.__file__).resolve().parents[1]


def _is_site_dir(path):
    """True if ``path`` is one of this interpreter's site-packages directories."""
    import site
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    return any(Path(d).resolve() == path for d in dirs if d)


def mpi_env():
    """Environment of the ranks: one numba and one BLAS/OpenMP thread per rank (the ranks
    oversubscribe the cores), and ``PYTHONPATH`` with the repository root and the tests directory
    (this module). The ranks must import the ``mgritnn`` this process uses (same code, same numba
    cache): when that is an installed copy, the repository root is left out so it cannot shadow
    it; when it is another source tree, that tree comes first."""
    env = dict(os.environ)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    root = _mgritnn_root()
    if root == REPO_ROOT:
        paths = [str(REPO_ROOT), str(TESTS_DIR)]
    elif _is_site_dir(root):            # an installed mgritnn: the ranks find it where we did
        paths = [str(TESTS_DIR)]
    else:                               # another source tree
        paths = [str(root), str(REPO_ROOT), str(TESTS_DIR)]
    for p in env.get("PYTHONPATH", "").split(os.pathsep):
        if p and p not in paths:
            paths.append(p)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class MPIResult(NamedTuple):
    """Outcome of one launch: the exit status of ``mpiexec``, its output, and the wall time."""
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    command: list

    @property
    def output(self):
        """stdout and stderr together (for messages and substring checks)."""
        return f"{self.stdout}\n{self.stderr}"

    def describe(self):
        """A readable report of the launch, for test failure messages."""
        return (f"command: {' '.join(self.command)}\nexit status {self.returncode} after "
                f"{self.seconds:.1f} s\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")


def _descendants(pid):
    """Pids of all processes below ``pid`` (read from /proc; empty where /proc is missing).

    Hydra's proxy and the ranks each start their own session, so killing the launcher's process
    group alone does not reach them."""
    children = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(e))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc):
    """Stop a launch: SIGTERM to ``mpiexec`` (hydra then cleans up its ranks), and after a grace
    period SIGKILL to its process group and to every process it started that is still alive."""
    below = _descendants(proc.pid)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_mpi(nprocs, script, *args, timeout=DEFAULT_TIMEOUT, check=False):
    """Run ``mpiexec -n nprocs <python> -m mpi4py <script> args`` and return an :class:`MPIResult`.

    Under ``-m mpi4py`` an uncaught exception (or ``sys.exit`` with a non-zero status) on any rank
    calls ``MPI_Abort``, which ends all ranks instead of leaving the others blocked in communication.
    MPICH's hydra starts more ranks than cores without extra flags.

    Parameters
    ----------
    nprocs : int
    script : str or Path
        A path, or a bare file name of ``tests/mpi``.
    *args : command-line arguments of the script (converted with ``str``)
    timeout : float
        Seconds. On expiry every process of the launch is killed and the calling test fails with
        the output captured so far.
    check : bool
        Fail the calling test (with the output) unless the exit status is 0.
    """
    import pytest

    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec next to the Python interpreter nor on PATH (install the 'mpich' wheel)")
    script = Path(script)
    if not script.is_absolute() and not script.exists():
        script = MPI_SCRIPTS / script
    cmd = [mpiexec, "-n", str(int(nprocs)), sys.executable, "-m", "mpi4py", str(script)]
    cmd += [str(a) for a in args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=str(REPO_ROOT), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        out, err = proc.communicate()
        res = MPIResult(proc.returncode, out, err, time.perf_counter() - t0, cmd)
        pytest.fail(f"mpiexec did not finish within {timeout} s; all its processes were killed.\n"
                    + res.describe(), pytrace=False)
    except BaseException:               # KeyboardInterrupt etc.: never leave ranks behind
        _kill_tree(proc)
        proc.communicate()
        raise
    res = MPIResult(proc.returncode, out, err, time.perf_counter() - t0, cmd)
    if check and res.returncode != 0:
        pytest.fail("mpiexec failed.\n" + res.describe(), pytrace=False)
    return res


# ------------------------------------------------------------------------------------------------
# Test problems (shared by the ranks and the pytest process)
# ------------------------------------------------------------------------------------------------

class Case(NamedTuple):
    """One deterministic problem and time-parallel solver configuration (MGRIT with ``tol`` as
    atol_l2, or DEER / quasi-DEER with ``fwd`` as max_iter and ``tol`` as atol).

    Serialized on the command line as ``key=value`` pairs separated by commas (:meth:`to_arg`).
    """
    cell: str = "classic"       # fine cell; the coarse levels always use the implicit cell
    layers: int = 1
    T: int = 37
    levels: int = 3
    cf: int = 2
    fwd: int = 2                # MGRIT max_iter
    bwd: int = 1                # MGRIT adjoint_max_iter
    tol: float = 1e-9
    cycle: str = "V"
    relax: str = "FCF"
    coarse_input: str = "sample"
    batch: int = 3
    inputs: int = 2
    hidden: int = 5
    classes: int = 3
    seed: int = 0
    solver: str = "mgrit"       # or "deer", "quasi-deer", "auto"
    scale: float = 1.0          # the model's parameters are multiplied by this
    lengths: str = "none"       # "end" / "front": mixed true lengths (:meth:`seq_lengths`), padded there
    preset: str = ""            # an MGRIT preset ("train": fwd/bwd its caps, tol its rms_tol)

    def to_arg(self):
        """Command-line form, e.g. ``cell=classic,layers=1,T=37,...`` (floats as exact ``repr``)."""
        return ",".join(f"{k}={getattr(self, k)!r}" if isinstance(getattr(self, k), float)
                        else f"{k}={getattr(self, k)}" for k in self._fields)

    @classmethod
    def from_arg(cls, s):
        """Inverse of :meth:`to_arg` (missing keys take their defaults)."""
        kw = {}
        types = {k: type(v) for k, v in cls._field_defaults.items()}
        for item in s.split(","):
            k, _, v = item.partition("=")
            if k not in types:
                raise ValueError(f"unknown case field {k!r} in {s!r}")
            kw[k] = types[k](v)
        return cls(**kw)

    @property
    def name(self):
        """Short id for test names."""
        iters = "tight" if self.tol < 1e-12 else f"it{self.fwd}-{self.bwd}"
        extra = "" if (self.cycle, self.relax, self.coarse_input) == ("V", "FCF", "sample") else \
            f"-{self.cycle}{self.relax}-{self.coarse_input}"
        lens = "" if self.lengths == "none" else f"-len{self.lengths}"
        if self.preset:
            return f"{self.preset}-{self.cell}-L{self.layers}-T{self.T}-it{self.fwd}-{self.bwd}-tol{self.tol:g}"
        if self.solver != "mgrit":
            scale = "" if self.scale == 1.0 else f"-x{self.scale:g}"
            return f"{self.solver}-{self.cell}-L{self.layers}-T{self.T}-it{self.fwd}{scale}{lens}"
        return (f"{self.cell}-L{self.layers}-T{self.T}-lv{self.levels}cf{self.cf}-{iters}{extra}"
                f"{lens}")

    def seq_lengths(self):
        """The batch's true lengths (B,) int64 (row 0 the full T, the others shorter, spread over
        1 .. T), or None for ``lengths="none"``."""
        if self.lengths == "none":
            return None
        ls = 1 + (np.arange(self.batch) * 11 + 3 * self.seed) % self.T
        ls[0] = self.T
        return ls.astype(np.int64)

    def length_kwargs(self):
        """``lengths`` and ``pad`` for the model's calls (empty without lengths)."""
        return {} if self.lengths == "none" else dict(lengths=self.seq_lengths(), pad=self.lengths)

    def config(self, comm=None):
        """The solver config of the case (``comm=None``: MPI's world under mpiexec, else one process)."""
        from mgritnn.plan import planned_solver
        from mgritnn.solvers import AutoConfig, DEERConfig, MGRITConfig
        if self.solver == "auto":           # the performance model's choice (tiny calibration)
            return planned_solver(AutoConfig(calibration="tiny"), comm=comm)
        if getattr(self, "preset", ""):       # ODECase shares this method, without presets
            return MGRITConfig.preset(self.preset, max_iter=self.fwd, adjoint_max_iter=self.bwd,
                                      rms_tol=self.tol, comm=comm)
        if self.solver != "mgrit":
            return DEERConfig(quasi=self.solver == "quasi-deer", atol=self.tol, rtol=0.0,
                              max_iter=self.fwd, comm=comm)
        return MGRITConfig(levels=self.levels, cf=self.cf, max_iter=self.fwd, adjoint_max_iter=self.bwd,
                           atol_l2=self.tol, cycle=self.cycle, relax=self.relax,
                           coarse_input=self.coarse_input, comm=comm)

    def problem(self):
        """``(model, X, y)``: a float64 classifier and a batch, both fixed by the case's fields."""
        import mgritnn
        model = mgritnn.GRUClassifier(self.inputs, self.hidden, self.classes, num_layers=self.layers,
                                      cell=self.cell, dtype="float64", seed=self.seed)
        model.flat[:] *= self.scale
        rng = np.random.default_rng([self.seed, self.T, self.layers])
        X = rng.standard_normal((self.batch, self.T, self.inputs))
        y = rng.integers(0, self.classes, self.batch)
        return model, X, y


def tight(case):
    """The case solved to round-off: tol 1e-13 and up to 50 cycles each way."""
    return case._replace(fwd=50, bwd=50, tol=1e-13)


def solve(case, solver=None):
    """Run ``loss_and_grad_flat`` and ``forward`` of the case with ``solver`` (default: the case's
    MGRIT configuration on MPI's world / one process). Returns a dict of arrays (the layout of the
    .npz written by ``tests/mpi/mgrit_case.py``):

    loss (0-d), grad, logits (of loss_and_grad_flat), logits_fwd (of forward), fwd_hist, adj_hist,
    fwd_iters, adj_iters, fwd_status, adj_status, step_evals (this process: forward, adjoint).
    """
    model, X, y = case.problem()
    solver = case.config() if solver is None else solver
    kw = case.length_kwargs() if isinstance(case, Case) else {}
    loss, grad, info = model.loss_and_grad_flat(X, y, solver, **kw)
    logits_fwd = model.forward(X, solver, **kw)
    f, a = info["forward"], info["adjoint"]
    return dict(loss=np.float64(loss), grad=grad, logits=info["logits"], logits_fwd=logits_fwd,
                fwd_hist=np.array(f.history, np.float64), adj_hist=np.array(a.history, np.float64),
                fwd_iters=np.int64(f.iterations), adj_iters=np.int64(a.iterations),
                fwd_status=np.int64(f.status), adj_status=np.int64(a.status),
                fwd_fallback=np.int64(f.fallback), adj_fallback=np.int64(a.fallback),
                step_evals=np.array([f.step_evals, a.step_evals], np.int64))


class ODECase(NamedTuple):
    """One deterministic ODENet problem (issue 12) and its MGRIT configuration over the layers;
    on the command line ``odenet:`` and then the fields as in :meth:`Case.to_arg`."""
    act: str = "tanh"
    opening: str = "dense"
    N: int = 37                 # depth: the number of residual layers (time steps)
    levels: int = 3
    cf: int = 2
    fwd: int = 2
    bwd: int = 1
    tol: float = 1e-9
    relax: str = "FCF"
    cycle: str = "V"
    batch: int = 5
    features: int = 3
    width: int = 4
    classes: int = 3
    final_time: float = 2.0
    seed: int = 0
    coarse_input: str = "sample"
    solver: str = "mgrit"

    config = Case.config

    def to_arg(self):
        return "odenet:" + Case.to_arg(self)

    @classmethod
    def from_arg(cls, s):
        return Case.from_arg.__func__(cls, s[len("odenet:"):])

    @property
    def name(self):
        iters = "tight" if self.tol < 1e-12 else f"it{self.fwd}-{self.bwd}"
        return (f"odenet-{self.act}-{self.opening}-N{self.N}-lv{self.levels}cf{self.cf}-"
                f"{self.cycle}{self.relax}-{iters}")

    def problem(self):
        """``(model, X, y)``: a float64 ODENet and a batch, fixed by the case's fields (the
        regularization 100x the default, so that its gradient matters)."""
        from mgritnn.odenet import ODENet
        model = ODENet(self.features, self.width, self.classes, self.N, activation=self.act,
                       opening=self.opening, final_time=self.final_time, tikhonov=1e-5,
                       ddt_penalty=1e-3, seed=self.seed, layer_init="independent")
        rng = np.random.default_rng([self.seed, self.N])
        return (model, rng.standard_normal((self.batch, self.features)),
                rng.integers(0, self.classes, self.batch))


def launch_cases(P, cases, out, timeout=DEFAULT_TIMEOUT):
    """Solve ``cases`` on P ranks in one launch of ``tests/mpi/mgrit_case.py`` (results to the
    file ``out``); returns ``{case.name: dict of arrays}`` as :func:`solve` makes them, with
    ``step_evals`` (P, 2)."""
    res = run_mpi(P, "mgrit_case.py", out, *[c.to_arg() for c in cases], timeout=timeout,
                  check=True)
    assert Path(out).is_file(), "mgrit_case.py exited 0 but wrote no results\n" + res.describe()
    with np.load(out) as z:
        data = {k: z[k] for k in z.files}
    return {c.name: {k[len(f"c{i}_"):]: v for k, v in data.items() if k.startswith(f"c{i}_")}
            for i, c in enumerate(cases)}


def parse_case(s):
    """A :class:`Case` or (prefix ``odenet:``) an :class:`ODECase` from its command-line form."""
    return ODECase.from_arg(s) if s.startswith("odenet:") else Case.from_arg(s)


def warm_numba_cache():
    """Compile (or load) every float64 kernel an MGRIT run uses, once, in this process.

    The kernels are jitted with ``cache=True``; after this the ranks load them from numba's on-disk
    cache instead of all compiling them at the same time on oversubscribed cores. Covers both
    fine cells, the implicit coarse cell, one and several layers, forward and adjoint, MGRIT and
    the serial solver.
    """
    for cell in ("classic", "implicit"):
        for layers in (1, 2):
            case = Case(cell=cell, layers=layers, T=9, levels=3, cf=2, fwd=2, bwd=2, batch=2,
                        hidden=3)
            solve(case)
            solve(case, "serial")
            for solver in ("deer", "quasi-deer"):
                solve(case._replace(solver=solver))
    from mgritnn.solvers.scan import linear_recurrence
    for shape in ((2, 1, 2, 2), (2, 1, 2)):
        for reverse in (False, True):
            linear_recurrence(np.zeros(shape), np.zeros((2, 1, 2)), np.zeros((1, 2)), reverse=reverse)


def scan_systems(n=41, B=2, H=3, seed=7):
    """Random linear recurrences ``{"dense": (A, b, h0), "diag": (A, b, h0)}`` for the scan tests
    (the same on every rank)."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind, shape in (("dense", (n, B, H, H)), ("diag", (n, B, H))):
        out[kind] = (rng.uniform(-0.7, 0.7, shape), rng.standard_normal((n, B, H)),
                     rng.standard_normal((B, H)))
    return out


def load_mpi_script(name):
    """The module of the script ``tests/mpi/<name>.py`` (its cases and one-process solves, for the
    pytest process's references), loaded by path (the scripts are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, MPI_SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def agree_with_rank_0(comm, name, results, failures, arrays):
    """Check that this rank's ``results`` (a dict of arrays) of the case ``name`` equal rank 0's
    bitwise (a failure message appended to ``failures`` per differing key); rank 0 adds them to
    ``arrays`` as ``{name}_{key}`` (collective)."""
    rank = comm.Get_rank()
    ref = comm.bcast(results if rank == 0 else None, root=0)
    for key, value in results.items():
        if not np.array_equal(value, ref[key]):
            failures.append(f"rank {rank}/{comm.Get_size()} {name}: {key} differs from rank 0's")
    if rank == 0:
        arrays.update({f"{name}_{k}": v for k, v in results.items()})


def finish_ranks(comm, failures, path, arrays):
    """End of a script run on every rank: print this rank's failure messages, agree over all ranks
    (``allreduce`` MIN) so that none is left waiting, and on success let rank 0 write ``arrays`` to
    ``path`` atomically. Returns the exit status: 0, or 1 on every rank if any rank failed."""
    from mpi4py import MPI

    from mgritnn.io import atomic_savez
    for msg in failures:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    if not comm.allreduce(0 if failures else 1, op=MPI.MIN):
        if comm.Get_rank() == 0:
            sys.stderr.write("some rank failed its checks; all ranks exit with status 1\n")
        return 1
    if comm.Get_rank() == 0:
        atomic_savez(path, arrays)
    comm.Barrier()
    return 0
