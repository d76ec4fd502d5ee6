#!/bin/bash
# Table 2 of the paper's protocol on one GPU: the same cells as run.sh
# (every mechanism at Original's searched configuration, 5 seeds, patience 60
# with the paper's patience 20 recorded from the same training), each cell
# as one 5-seed vmapped ensemble, ML-1M first, then Beauty. Run from the
# repository root, with the benchmark files in .gpu/data (and, where the
# machine lacks tqdm, its wheel in .gpu/whl), which `prepare` puts there on
# this machine; then carry .gpu to the device:
#
#   bash results/paper_protocol/gpu_table2.sh prepare
#   OUT=/tmp/gpu_out bash results/paper_protocol/gpu_table2.sh
#
# The cells committed from an earlier session on the same kind of GPU
# (table2/TAG-GPU/, e.g. ml1m-h200) are copied into runs/gpu/TAG first, so
# only the missing cells train; a cell its patience ended under a lower cap
# stands under a higher one. Each finished cell is packed at once, without
# checkpoints, into $OUT/TAG.tgz (runs/gpu/TAG/), so a time limit loses only
# the cell in training; commit them to table2/TAG-GPU/ with
# `protocol.py sync-cells`. DATASETS, MECHS and EPOCHS_MAX override the
# defaults (a CPU check of the script: EPOCHS_MAX=1 MECHS=none DATASETS=ml-1m;
# GPU=h200 MECHS="none simp" DATASETS=ml-1m finds both cells committed).
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p .gpu/data .gpu/whl
  cp -f ../shared/data/ml-1m_sasrec-equivalent.txt ../shared/data/Beauty_5core_stosa.txt .gpu/data/
  python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl tqdm
  ls -l .gpu/data .gpu/whl
  exit
fi
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 AWRSR_DATA_DIR=${AWRSR_DATA_DIR:-$PWD/.gpu/data}
if ! python3 -c "import tqdm" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi -L; python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
  > "$OUT/device.log" 2>&1
GPU=${GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null |
  head -1 | grep -oE 'H[0-9]+' | tr A-Z a-z)}  # set by hand: a CPU check
P=results/paper_protocol
for DATA in ${DATASETS:-ml-1m beauty}; do
  case $DATA in
    ml-1m) TAG=ml1m ;;
    beauty) TAG=beauty ;;
  esac
  EPOCHS=${EPOCHS_MAX:-1000}  # run.sh's cap; patience 60 ends the seeds
  [ -n "$GPU" ] && [ -d $P/table2/$TAG-$GPU ] &&
    python3 $P/protocol.py sync-cells $P/table2/$TAG-$GPU runs/gpu/$TAG >> "$OUT/log.txt"
  for MECH in ${MECHS:-none simp value add}; do
    echo "== $(date -u +%T) $TAG $MECH" >> "$OUT/log.txt"
    python3 -m experiments.reproduce --table=2 --datasets=$DATA --backbones=sasrec \
      --seeds=5 --tuned=$P/search/$TAG-sasrec-stage2/original.json --epochs=$EPOCHS \
      --patience=60 --report_patience=20 --mechs=$MECH --checkpoint_every=50 \
      --out=runs/gpu/$TAG >> "$OUT/log.txt" 2>&1
    tar czf "$OUT/$TAG.tgz.part" --exclude=checkpoints runs/gpu/$TAG &&
      mv "$OUT/$TAG.tgz.part" "$OUT/$TAG.tgz"
  done
done
echo "== $(date -u +%T) end" >> "$OUT/log.txt"
