#!/usr/bin/env bash
# The one GPU session behind results/: run from the repo root on the lent GPU
# machine with the benchmark files in .gpu/data and the tqdm wheel in .gpu/whl
# (both carried, neither committed). Every stage has its own time limit and
# writes its log to $OUT as it goes; runs/ is packed into $OUT/runs.tgz at the end.
#   SMOKE=1 bash benchmarks/gpu_suite.sh   # the same pipeline on tiny settings (CPU)
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1 AWRSR_DATA_DIR=$PWD/.gpu/data
if [ -d .gpu/whl ] && ! python3 -c "import tqdm" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ "${SMOKE:-0}" = 1 ]; then
  B="--budget=smoke"; E="--epochs=2"; BENCH="--quick"; T=1
else
  B="--budget=gpu"; E=""; BENCH="--suite=gpu --budget_s=100 --epochs=3"; T=1
fi
stage() { local name=$1 limit=$2; shift 2; echo "== $name $(date +%T)"; \
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "   rc=$? $(date +%T)"; }
{ nvidia-smi -L; python3 -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/device.log" 2>&1
ML1M="--dataset=file --data_file=$AWRSR_DATA_DIR/ml-1m_sasrec-equivalent.txt --max_len=200 --hidden=50 --layers=2 --heads=1 --dropout=0.2 --lr=1e-3 --batch_size=128 --checkpoint_every=1000"
[ "${SMOKE:-0}" = 1 ] && ML1M="--max_len=20 --hidden=16 --checkpoint_every=1000 $E"
# Table 2 cells double as the issue figures: SASRec ML-1M (BCE) and STOSA Beauty.
stage t2_ml1m_sasrec $((170*T)) python3 -m experiments.reproduce --table=2 $B $E --datasets=ml-1m --backbones=sasrec --out=runs/reproduce --max_minutes=2.2
stage t2_beauty_stosa $((150*T)) python3 -m experiments.reproduce --table=2 $B $E --datasets=beauty --backbones=stosa --out=runs/reproduce --max_minutes=1.9
for m in none value; do
  stage ce_ml1m_$m $((50*T)) python3 -m experiments.main --mech=$m --loss=ce $ML1M --workdir=runs/ce_ml1m_$m
done
stage bench $((110*T)) python3 -m experiments.bench $BENCH
tar czf "$OUT/runs.tgz" --exclude=checkpoints runs
echo "== done $(date +%T)"
