#!/usr/bin/env bash
# GPU check: on a CUDA machine, run all five methods with QLoRA (4-bit base) on the embedded model for a few steps,
# then evaluate, merge (into the dequantized 4-bit base) and export to GGUF (f16 and q8_0), printing one summary
# line per step.
# Not part of `make test` (it needs a GPU). Record what it prints in NOTES.md.
#
#   make install && scripts/gpu_check.sh            # runs into runs/gpu_check (replaced each time)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT_DIR:-runs/gpu_check}
STEPS=${STEPS:-5}
MODEL=${MODEL:-}          # default: the embedded model
QLORA=true
LOG=$OUT/logs
failures=0

if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then  # a smoke test of this script itself on a CPU machine (no QLoRA there)
  QLORA=false
elif ! "$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; run this on a GPU machine" >&2
  exit 2
fi
case "$(realpath -m "$OUT")" in
  /|"$HOME"|"$PWD") echo "gpu_check: refusing OUT_DIR=$OUT (it is replaced each time); pick a folder of its own" >&2
    exit 2 ;;
esac
rm -rf "$OUT" && mkdir -p "$LOG"
"$BIN/python" -c "import torch; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; \
print(f'gpu_check: {p.name if p else \"CPU (smoke test)\"}, torch {torch.__version__}, CUDA {torch.version.cuda}')"

step() {  # step NAME COMMAND...: run it, print one line with the status and the time it took
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$LOG/$name.log" 2>&1; then
    echo "gpu_check: ok    $name ($((SECONDS - start)) s)$(summary "$name")"
  else
    echo "gpu_check: FAIL  $name ($((SECONDS - start)) s): $(grep -v '^\s*$' "$LOG/$name.log" | tail -1)"
    failures=$((failures + 1))
  fi
}

summary() {  # the run's device/dtype/QLoRA and its first and last loss, from the files it wrote
  local run=$OUT/$1
  [ -f "$run/unitune_run.json" ] || return 0
  "$BIN/python" - "$run" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
record = json.loads((run / "unitune_run.json").read_text())
hw = record["hardware"]
losses = [e["loss"] for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in e]
loss = f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
print(f": {hw['device']} {hw['dtype']} qlora={hw['qlora']}, {record['global_step']} steps, "
      f"{record['wall_time_seconds']} s{loss}", end="")
EOF
}

for method in sft dpo orpo kto grpo; do
  step "$method" "$BIN/unitune" train --method "$method" --use_qlora "$QLORA" --max_steps "$STEPS" \
    --max_train_samples 64 --output_dir "$OUT/$method" --save_steps "$STEPS" ${MODEL:+--model_name "$MODEL"}
done
step eval "$BIN/unitune" eval --runs_dir "$OUT" --max_samples 32 ${MODEL:+--base_model "$MODEL"}
step merge "$BIN/unitune" merge --run "$OUT/sft" --output "$OUT/merged/sft" --dtype bfloat16
step export "$BIN/unitune" export --run "$OUT/sft" --output "$OUT/export/sft"
step export_q8 "$BIN/unitune" export --run "$OUT/sft" --output "$OUT/export/sft-q8" --quant q8_0
echo "gpu_check: $failures failure(s); logs in $LOG"
exit $((failures > 0))
