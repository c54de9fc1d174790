#!/usr/bin/env bash
# Training parity of MGRIT's training preset against the serial sweep (docs/gradient-quality.md).
# Runs one after another (2 cores: MGRIT on 2 ranks x 1 thread, serial on 1 process x 2 threads);
# the epoch lines go to OUT/<name>.log, the JSON-lines records to OUT/<name>.jsonl.
#   bash perf/parity_runs.sh [OUT] [which...]     (which: t4096 t4096train t16384 t16384train watch real;
#    default t4096 watch; real: the other real sequence sets of ../shared/data, classic cell)
#   t4096train: only the training preset's runs of t4096
set -u
OUT=${1:-perf/results/parity-$(date +%F)}; shift || true
WHICH=${*:-t4096 watch}
D=../shared/data
mkdir -p "$OUT"
run() {  # name, then the command
    local name=$1; shift
    echo "== $name: $*" | tee "$OUT/$name.log"
    ( time "$@" --log "$OUT/$name.jsonl" ) >> "$OUT/$name.log" 2>&1
    tail -n 40 "$OUT/$name.log" | grep -E "^epoch|fallback|gradient check|real" | tail -n 12
}
M2="mpiexec -n 2"
for w in $WHICH; do
  case $w in
  t4096train)
    for cell in implicit classic; do
      A="--seq-len 4096 --batch-size 4 --cell $cell --hidden 32 --epochs 3 --lr 1e-3 --clip 1.0"
      run t4096_${cell}_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
    done ;;
  t16384)   # float32 at T = 16384: exploding batches (the scaled adjoints, serial's and MGRIT's fallback)
    A="--seq-len 16384 --batch-size 4 --cell implicit --hidden 32 --epochs 3 --lr 1e-3 --clip 1.0"
    run t16384_serial mgritnn train $A
    run t16384_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
    ;;
  t16384train)
    A="--seq-len 16384 --batch-size 4 --cell implicit --hidden 32 --epochs 3 --lr 1e-3 --clip 1.0"
    run t16384_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
    ;;
  t4096)
    for cell in implicit classic; do
      A="--seq-len 4096 --batch-size 4 --cell $cell --hidden 32 --epochs 3 --lr 1e-3 --clip 1.0"
      run t4096_${cell}_serial mgritnn train $A
      run t4096_${cell}_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
      run t4096_${cell}_paper $M2 mgritnn train $A --solver mgrit --preset paper --gradient-check 10
    done ;;
  real)     # serial, the training preset and the paper preset on UCI HAR, JapaneseVowels (lengths
            # used) and BasicMotions: classic cell, seed 0, the epochs of docs/results.md
    for set in uci_har japanese_vowels basic_motions; do
      [ -f $D/$set.npz ] || { echo "no $D/$set.npz: skipped"; continue; }
      case $set in
      uci_har) A="--data $D/$set.npz --cell classic --layers 2 --hidden 100 --lr 1e-3 --batch-size 100 --epochs 10" ;;
      *) A="--data $D/$set.npz --cell classic --hidden 32 --seed 0 --epochs 40" ;;
      esac
      run ${set}_serial mgritnn train $A
      run ${set}_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
      run ${set}_paper $M2 mgritnn train $A --solver mgrit --preset paper --gradient-check 10
    done ;;
  watch)
    [ -f $D/watch_exercise.npz ] || { echo "no $D/watch_exercise.npz: skipped"; continue; }
    A="--data $D/watch_exercise.npz --hidden 32 --batch-size 8 --seed 0 --epochs 30"
    run watch_classic_serial mgritnn train $A
    run watch_classic_train $M2 mgritnn train $A --solver mgrit --preset train --gradient-check 10
    ;;
  esac
done
