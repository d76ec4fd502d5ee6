#!/usr/bin/env bash
# Second GPU session: single-seed STOSA Beauty runs for every mechanism and the
# ML-1M value runs, concurrently on one GPU (no memory preallocation), after
# the STOSA bench cases alone. Same setup as gpu_suite.sh. Kept as the record of
# what ran: seven trainings at once were each slower than alone (their
# per-epoch times were not kept), and none finished in 165 s. Run them one at
# a time next time.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT" runs/logs
export PYTHONUNBUFFERED=1 AWRSR_DATA_DIR=$PWD/.gpu/data XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .gpu/whl ] && ! python3 -c "import tqdm" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
D=$AWRSR_DATA_DIR
timeout 60 python3 -m experiments.bench --suite=gpu --only=stosa-none,stosa-stoc --epochs=3 > "$OUT/bench2.log" 2>&1
BEAUTY="--backbone=stosa --dataset=file --data_file=$D/Beauty_5core_stosa.txt --hidden=64 --layers=1 --heads=4 --max_len=100 --dropout=0.3 --attn_dropout=0 --pvn_weight=0.005 --lr=1e-3 --batch_size=256 --epochs=120 --patience=10 --eval_every=2 --checkpoint_every=1000"
ML1M="--dataset=file --data_file=$D/ml-1m_sasrec-equivalent.txt --max_len=200 --hidden=50 --layers=2 --heads=1 --dropout=0.2 --lr=1e-3 --batch_size=128 --checkpoint_every=1000"
for m in none simp value add stoc; do
  timeout 165 python3 -m experiments.main $BEAUTY --mech=$m --workdir=runs/stosa_beauty_$m > runs/logs/stosa_beauty_$m.log 2>&1 &
done
timeout 165 python3 -m experiments.main $ML1M --mech=value --workdir=runs/bce_ml1m_value > runs/logs/bce_ml1m_value.log 2>&1 &
timeout 165 python3 -m experiments.main $ML1M --mech=value --loss=ce --workdir=runs/ce_ml1m_value > runs/logs/ce_ml1m_value.log 2>&1 &
wait
tar czf "$OUT/runs2.tgz" --exclude=checkpoints runs
grep -h -A4 "^split" runs/logs/*.log > "$OUT/summary.txt"; ls runs/*/results.json >> "$OUT/summary.txt"
