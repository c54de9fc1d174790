#!/bin/bash
# Peaks (issue 12): the ODENet of the layer-parallel paper (width 8, depth 32, final time 1,
# SmoothReLU) trained by Adam serially, layer-parallel by MGRIT on 2 and 4 ranks (--preset layers:
# the paper's MGRIT settings), with nested iteration at an equal budget, and by full-batch L-BFGS.
# Usage: perf/odenet_peaks.sh OUTDIR   (run from the repository root; PYTHON, MPIEXEC may be set)
set -u
OUT=${1:-perf/results/odenet}
PYTHON=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-mpiexec}
mkdir -p "$OUT"
COMMON="--model odenet --data peaks --width 8 --depth 32 --final-time 1 --activation smoothrelu
        --dtype float64 --seed 0 --quiet --threads 1"
ADAM="--optimizer adam --lr 0.02 --batch-size 100"
run() {     # name ranks flags...
  local name=$1 np=$2; shift 2
  local launch="$PYTHON -m mgritnn"
  [ "$np" -gt 1 ] && launch="$MPIEXEC -n $np $PYTHON -m mgritnn"
  echo "\$ $launch train $COMMON $* --log $OUT/$name.jsonl" | tr -s ' \n' ' ' > "$OUT/$name.txt"
  echo >> "$OUT/$name.txt"
  rm -f "$OUT/$name.jsonl"
  /usr/bin/time -f "wall %e s" $launch train $COMMON "$@" --log "$OUT/$name.jsonl" >> "$OUT/$name.txt" 2>&1
}
run serial_adam 1 $ADAM --epochs 40
run mgrit2_adam 2 $ADAM --epochs 40 --solver mgrit --preset layers
run mgrit4_adam 4 $ADAM --epochs 40 --solver mgrit --preset layers
# nested: depth 8 (20 epochs), 16 (10 epochs), 32 (30 epochs): 20/4 + 10/2 + 30 = 40 depth-32 epochs of layer steps
run nested_adam 1 $ADAM --epochs 30 --nested-levels 2 --nested-cf 2 --nested-epochs 20,10
run serial_lbfgs 1 --optimizer lbfgs --epochs 300
