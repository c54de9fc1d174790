#!/usr/bin/env bash
# Issue 22, item 6: the scaling measurements of a machine with 16 or more cores, in one call of at
# most 10 minutes, every result under one folder.
#
#   1. perf/bench_bound.py at P = 1, 2, 4, 8, 16 (each route's step against its work bound: the
#      evaluations per rank times the serial cost of one; one interleaved round, 3 repeats);
#   2. perf/bench_scaling.py, strong scaling of R2 and UCI HAR up to 16 ranks, and the performance
#      model's validation against those points (perf/validate_perfmodel.py, target 20 %);
#   3. the machine (`mgritnn info`, lscpu, the Python packages) beside them.
#
# Where: the repository root. The results go to $OUT (the device tool's folder that comes back) or,
# without it, perf/results/device-<date>/. Each step has its own time limit (timeout), so that a
# slow one cannot take the others' time; a step that runs out leaves what it wrote.
#
# On the device machine of this workplace (python3 there has numpy, numba, scipy and mpi4py, but no
# MPI runtime), carry the MPI wheels for its Python 3.12, prepared here once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl mpich==5.0.2 mpi4py==4.1.2
#
# and run:   run(command="bash perf/device_scaling.sh", carry=[".whl"], timeout_s=600)
# Here (2 cores) a check of the script itself: QUICK=1 bash perf/device_scaling.sh
set -uo pipefail
OUT=${OUT:-perf/results/device-$(date +%F)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH LD_LIBRARY_PATH=/tmp/site/lib:${LD_LIBRARY_PATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-}
if [ -n "${QUICK:-}" ]; then
    RANKS=1,2; ROWS=peaks; SCALE_SHAPES=R2; MAX_RANKS=2; T_BOUND=300; T_SCALE=300; T_MODEL=300
else
    RANKS=1,2,4,8,16; ROWS=peaks,peaks-b,deep,R1,R2; SCALE_SHAPES=R2,uci_har; MAX_RANKS=16
    T_BOUND=240; T_SCALE=150; T_MODEL=150    # with the install, within the call's 600 s
fi

{   date -u; uname -a; lscpu 2>/dev/null | head -20; nproc
    $PY -m mgritnn info 2>&1
    $PY -m pip list 2>/dev/null | grep -i -E "^(numpy|numba|llvmlite|scipy|mpi4py|mpich) "
    git log -1 --oneline 2>/dev/null; } > "$OUT/machine.txt" 2>&1

echo "== work bound: rows $ROWS at P = $RANKS (limit ${T_BOUND} s)"
timeout "$T_BOUND" $PY perf/bench_bound.py --rows "$ROWS" --ranks "$RANKS" --rounds 1 \
    --repeats 3 --out "$OUT/bound.jsonl" 2>&1 | tee "$OUT/bound.txt"

echo "== strong scaling of $SCALE_SHAPES up to $MAX_RANKS ranks (limit ${T_SCALE} s)"
timeout "$T_SCALE" $PY perf/bench_scaling.py --shapes "$SCALE_SHAPES" --scaling strong \
    --max-ranks "$MAX_RANKS" --repeats 2 --out "$OUT/scaling.jsonl" 2>&1 | tee "$OUT/scaling.txt"

echo "== the performance model against the measured points (its first use calibrates the kernels)"
if [ -s "$OUT/scaling.jsonl" ]; then
    timeout "$T_MODEL" $PY perf/validate_perfmodel.py "$OUT/scaling.jsonl" --out "$OUT/validate.jsonl" \
        2>&1 | tee "$OUT/validate.txt"
fi
ls -la "$OUT"
