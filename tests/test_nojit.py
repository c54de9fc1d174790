"""The kernels as plain Python (``NUMBA_DISABLE_JIT=1``): every route still gives the reference
result (``nojit_cases.py``). Catches Python bodies that compiled code never runs, such as the
stubs that numba's ``@overload`` replaces."""
import os
import subprocess
import sys


def test_every_route_without_the_compiler():
    here = os.path.dirname(__file__)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, os.path.join(here, "nojit_cases.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
