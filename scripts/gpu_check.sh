#!/usr/bin/env bash
# GPU check: one unattended run on one CUDA GPU that records every line it prints. Steps, in order:
#   env    the Python environment (the repo's .venv; on a machine without one, the wheels `bundle` fetched, installed
#          into $SITE beside that machine's own torch), library versions, liger-kernel (installed if missing), vLLM;
#   model  a Qwen2-0.5B-sized model (494M parameters, random weights, bf16, the embedded tokenizer) built once from a
#          config (bench/run.py --build_model);
#   bench  bench/run.py --gpu on it: SFT and DPO timed against plain TRL's defaults and TRL + Liger, the peak GPU
#          memory of all five methods against TRL's defaults, GRPO with TRL's vLLM colocate mode where a vLLM fits
#          (bench/results_gpu.json); the target: SFT >= 2x TRL's defaults in tokens/s at <= TRL's peak memory;
#   train  sft dpo orpo kto grpo rm rloo with QLoRA through `unitune train`, STEPS steps each, all at once; then
#          grpo rewarded by the rm run, distill from the sft run and grpo calling the calculator, at once;
#   after  eval (every run and the base), merge, export (GGUF f16 and q8_0) and a one-message chat, all at once.
# Each step runs under `timeout`, inside an overall budget (GPU_CHECK_BUDGET seconds), and prints one line; the
# transcript goes, with the date and the GPU's name, into bench/RESULTS.md under "GPU check runs" (not for a smoke
# test). Not part of `make test`.
#
# Expected GPU time on one H200 (estimates from the 2026-11-28 H200 bench: SFT 1.4 s and TRL's defaults 2.3 s per
# 4 x 4 step, DPO 2.0 and 2.9 s; a process's imports, CUDA start and 4-bit load take ~15-20 s):
#   env ~20 s (installing 29 MB of wheels; nothing with a .venv), model ~15 s (init and save of 1 GB),
#   bench ~4.5 min (6 contenders one at a time, ~30-40 s each: ~15-20 s of start-up, then 6 steps of 1.4-3 s; then
#   6 memory contenders at once, ~60 s, GRPO's sampling the longest), train ~1-1.5 min (the five at once; GRPO's 5
#   steps of sampling 16 completions of 64 tokens bound it), after ~1 min (eval's 6 entries bound it): ~7-7.5 min.
#   The budget, 460 s, ends the run before 8 min whatever hangs: each step's timeout is at most what is left of it
#   (plus 10 s to kill), and a step that would start with under 15 s left is skipped with a line. The device
#   tool's own start (1-2 min) comes on top: of a 15-minute lease, a run leaves ~5 min for one partial rerun.
#
#   scripts/gpu_check.sh                    # a GPU machine after `make install`: runs into runs/gpu_check
#   scripts/gpu_check.sh bundle             # a machine with network: wheels + tokenizer into .gpu/ for a GPU
#                                           # machine that has torch but no .venv and no network (29 MB)
#   RECORD_DIR=$OUT scripts/gpu_check.sh    # the project's lent H200: carry [".gpu"], timeout_s 600; also copies
#                                           # gpu_check.md, results_gpu.json and the logs into RECORD_DIR
#   scripts/gpu_check.sh record DIR         # back here: append DIR/gpu_check.md to bench/RESULTS.md and copy
#                                           # DIR/results_gpu.json to bench/
#   GPU_CHECK_CPU=1 STEPS=1 scripts/gpu_check.sh   # smoke test of this script on CPU: a tiny model, no QLoRA, no
#                                                  # bench; writes runs/gpu_check/gpu_check.md only
# Settings (environment): OUT_DIR (runs/gpu_check, replaced each time), STEPS (5), MODEL (a model folder instead
# of the built one), TOKENIZER (the tokenizer folder for the model: .gpu/tokenizer if there, else the embedded
# model's), GPU_CHECK_BUDGET (460 s; 2400 for a smoke test, whose steps may also take 5x their GPU limits),
# GPU_CHECK_SITE (/tmp/unitune-site), BIN (.venv/bin).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-.venv/bin}
RUNS=${OUT_DIR:-runs/gpu_check}   # not $OUT: the device tool's own variable
STEPS=${STEPS:-5}
MODEL=${MODEL:-}
SMOKE=${GPU_CHECK_CPU:-0}
SCALE=$([ "$SMOKE" = 1 ] && echo 5 || echo 1)  # a CPU smoke test's steps take longer than the GPU's limits
BUDGET=${GPU_CHECK_BUDGET:-$((SMOKE == 1 ? 2400 : 460))}
BUNDLE=.gpu
SITE=${GPU_CHECK_SITE:-/tmp/unitune-site}
LIGER_VERSION=0.8.5   # the newest on PyPI (2026-12); TRL 1.16 takes >= 0.8.2; it needs torch >= 2.1.2, triton >= 2.3.1
CONSTRAINTS=src/unitune/assets/constraints.txt
# What the lent H200's image lacks (or holds at other versions) of unitune's needs; its own torch, numpy, pyarrow,
# pandas, tokenizers, huggingface_hub, safetensors, sympy, ... stay. Versions: CONSTRAINTS.
WHEELS="transformers trl peft accelerate datasets dill multiprocess bitsandbytes gguf math-verify latex2sympy2_extended
antlr4-python3-runtime regex"

bundle() {  # fetch the wheels (Python 3.12, x86-64) and the tokenizer into .gpu/
  local py=$BIN/python pins=() name
  for name in $WHEELS; do pins+=("$(grep -i "^$name==" "$CONSTRAINTS" | head -1)"); done
  local platform=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
                  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
                  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels" "$BUNDLE/extra" "$BUNDLE/tokenizer" || return 1
  "$py" -m pip download -q "${platform[@]}" -d "$BUNDLE/wheels" "${pins[@]}" || return 1
  "$py" -m pip download -q "${platform[@]}" -d "$BUNDLE/extra" "liger-kernel==$LIGER_VERSION" || return 1
  # bitsandbytes ships a library per CUDA and ROCm version (43 MB): keep CPU's and CUDA 13's (the H200's torch is
  # cu130); on another CUDA the check points bitsandbytes at CUDA 13.0's with BNB_CUDA_VERSION
  "$py" - "$BUNDLE/wheels" <<'EOF' || return 1
import re, sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("bitsandbytes-*.whl"))
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as zout:
    drop = {i.filename for i in zin.infolist() if "/libbitsandbytes_" in i.filename and not keep.search(i.filename)}
    for item in zin.infolist():
        if item.filename in drop:
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = "".join(r for r in data.decode().splitlines(True) if r.split(",")[0] not in drop).encode()
        zout.writestr(item, data)
slim.replace(wheel)
EOF
  "$py" - "$BUNDLE/tokenizer" <<'EOF' || return 1
import shutil, sys
from pathlib import Path
from unitune.models.load import resolve_model
source = Path(resolve_model(None))
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
    if (source / name).exists():
        shutil.copy(source / name, sys.argv[1])
EOF
  echo "gpu_check bundle: $(du -sh "$BUNDLE" | cut -f1) in $BUNDLE/ ($(ls "$BUNDLE/wheels" | wc -l) wheels," \
       "liger-kernel $LIGER_VERSION in $BUNDLE/extra, the embedded tokenizer); name \"$BUNDLE\" in the run's carry"
}

record_into() {  # record_into SECTION_FILE: append a run's section to bench/RESULTS.md, under its heading
  local heading='## GPU check runs (`scripts/gpu_check.sh`)'
  grep -qxF "$heading" bench/RESULTS.md || printf '\n%s\n\nEach run appends its transcript here.\n' "$heading" \
    >>bench/RESULTS.md
  cat "$1" >>bench/RESULTS.md
}

case "${1:-}" in
  bundle) bundle; exit ;;
  record) [ -f "${2:-}/gpu_check.md" ] || { echo "gpu_check record: no ${2:-DIR}/gpu_check.md" >&2; exit 2; }
    # the lent machine gets the working tree without .git: name the commit here (DIR may be read-only)
    section=$(mktemp) rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
    sed "s/^\(\`scripts\/gpu_check.sh\` at \)an unknown commit/\1$rev/" \
      "$2/gpu_check.md" >"$section" && record_into "$section" \
      && echo "gpu_check record: $2/gpu_check.md appended to bench/RESULTS.md"
    rm -f "$section"
    if [ -f "$2/results_gpu.json" ]; then
      cp "$2/results_gpu.json" bench/ && echo "gpu_check record: $2/results_gpu.json copied to bench/"
    fi
    exit ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [bundle | record DIR]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------- which Python, and a GPU
WHEELS_MODE=0
if [ -x "$BIN/python" ]; then
  PY=$BIN/python ENV_FROM="$BIN"
else
  PY=$(command -v python3) ENV_FROM="python3 as it is, with src/ on PYTHONPATH"
  export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
  if [ -d "$BUNDLE/wheels" ]; then
    WHEELS_MODE=1 ENV_FROM="python3 + $BUNDLE/wheels installed into $SITE, src/ on PYTHONPATH"
    export PYTHONPATH=$SITE:$PYTHONPATH
  fi
fi
if [ "$SMOKE" = 1 ]; then
  QLORA=false
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch ($PY); run this on a GPU machine" >&2
  exit 2
else
  QLORA=true
fi
case "$(realpath -m "$RUNS")" in
  /|"$HOME"|"$PWD") echo "gpu_check: refusing OUT_DIR=$RUNS (it is replaced each time); pick a folder of its own" >&2
    exit 2 ;;
esac
rm -rf "$RUNS" && mkdir -p "$RUNS/runs"
RUNS=$(realpath "$RUNS")
LOG=$RUNS/logs
TRANSCRIPT=$RUNS/transcript.txt
mkdir -p "$LOG" && : >"$TRANSCRIPT" && touch "$RUNS/.started"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
DEADLINE=$((SECONDS + BUDGET))
failures=0 skipped=0 JOBS=() GPU_NAME="?"

say() { echo "$*"; echo "$*" >>"$TRANSCRIPT"; }

start() {  # start NAME MAX COMMAND...: run it in the background under timeout (MAX s at most, within the budget)
  local name=$1 max=$(($2 * SCALE)); shift 2
  local left=$((DEADLINE - SECONDS))
  local limit=$((max < left ? max : left))
  if ((limit < 15)); then
    say "gpu_check: SKIP  $name: the overall budget of $BUDGET s is spent"
    skipped=$((skipped + 1))
    return
  fi
  (began=$SECONDS; timeout -k 10 "$limit" "$@" >"$LOG/$name.log" 2>&1; echo "$? $((SECONDS - began)) $limit" \
    >"$LOG/$name.rc") </dev/null &
  JOBS+=("$name")
}

finish() {  # wait for the started steps: one line each, in the order they started
  wait
  local name rc took limit
  for name in "${JOBS[@]}"; do
    read -r rc took limit <"$LOG/$name.rc" || rc=1 took=? limit=?
    if [ "$rc" = 0 ]; then
      say "gpu_check: ok    $name ($took s)$(summary "$name")"
    else
      local how="FAIL  $name ($took s)"
      { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && how="TIMEOUT $name ($took s: the step's limit, $limit s)"
      say "gpu_check: $how: $(grep -v '^\s*$' "$LOG/$name.log" | tail -1 | cut -c1-300)"
      failures=$((failures + 1))
    fi
    if [ "$name" = bench ]; then  # the bench's own lines: one per contender, the target, Liger, memory
      while IFS= read -r line; do say "$line"; done < <(grep -E '^(bench --gpu:|  )' "$LOG/bench.log")
    fi
  done
  JOBS=()
}

step() { start "$@"; finish; }  # one step alone

summary() {  # what a finished step made, from its files
  local name=$1
  case $name in
    env|model) echo ": $(grep -E '^(env|  built)' "$LOG/$name.log" | tail -1 | sed 's/^env: //; s/^  //')" ;;
    bench) echo ": bench/results_gpu.json" ;;
    merge) echo ": $RUNS/merged/sft ($(du -sm "$RUNS/merged/sft" | cut -f1) MB)" ;;
    export|export_q8) local f
      for f in "$RUNS/export/$([ "$name" = export ] && echo sft || echo sft-q8)"/*.gguf; do
        echo ": ${f#"$RUNS"/} ($(du -m "$f" | cut -f1) MB)"
      done ;;
    chat) echo ": replied $(wc -c <"$RUNS/chat_reply.txt") characters:" \
      "\"$(tr -s '[:space:]' ' ' <"$RUNS/chat_reply.txt" | cut -c1-80)\"" ;;
    *) [ -f "$RUNS/runs/$name/unitune_run.json" ] || [ "$name" = eval ] || return 0
      "$PY" - "$RUNS/runs" "$name" <<'EOF'
import json, sys
from pathlib import Path
runs, name = Path(sys.argv[1]), sys.argv[2]
if name == "eval":
    entries = json.loads((runs / "evaluation_results.json").read_text())
    loss = ", ".join(f"{k} {v['test_loss']:.3f}" for k, v in entries.items() if v.get("test_loss") is not None)
    print(f": {len(entries)} entries, test_loss {loss}", end="")
    sys.exit()
run = runs / name
record = json.loads((run / "unitune_run.json").read_text())
hw = record["hardware"]
losses = [e["loss"] for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in e]
loss = f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
print(f": {hw['device']} {hw['dtype']} qlora={hw['qlora']}, {record['global_step']} steps, "
      f"{record['wall_time_seconds']} s{loss}", end="")
EOF
      ;;
  esac
}

record() {  # at exit: the transcript as a section of bench/RESULTS.md, and into RECORD_DIR
  local section=$RUNS/gpu_check.md rev
  rev=$(git rev-parse --short HEAD 2>/dev/null) || rev="an unknown commit"
  say "gpu_check: $failures failure(s), $skipped skipped, $SECONDS s of the $BUDGET s budget; logs in $LOG"
  {
    printf '\n### %s: %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$GPU_NAME"
    printf '`scripts/gpu_check.sh` at %s (and the working tree), STEPS=%s, %s s of a %s s budget:\n\n```\n' \
      "$rev" "$STEPS" "$SECONDS" "$BUDGET"
    cat "$TRANSCRIPT"
    printf '```\n'
  } >"$section"
  if [ "$SMOKE" = 1 ]; then
    echo "gpu_check: smoke test: the record is $section (bench/RESULTS.md untouched)"
  else
    record_into "$section" && echo "gpu_check: transcript appended to bench/RESULTS.md"
  fi
  if [ -n "${RECORD_DIR:-}" ]; then
    mkdir -p "$RECORD_DIR" && cp "$section" "$RECORD_DIR/gpu_check.md"
    [ bench/results_gpu.json -nt "$RUNS/.started" ] && cp bench/results_gpu.json "$RECORD_DIR/"
    tar -czf "$RECORD_DIR/gpu_check_logs.tar.gz" -C "$RUNS" logs transcript.txt 2>/dev/null
    echo "gpu_check: copied gpu_check.md$([ -f "$RECORD_DIR/results_gpu.json" ] && echo ', results_gpu.json')," \
         "gpu_check_logs.tar.gz into $RECORD_DIR; there: scripts/gpu_check.sh record <that folder>"
  fi
}
trap record EXIT
trap 'exit 143' TERM INT

# ---------------------------------------------------------------- env
UNITUNE=("$PY" -m unitune)
TOKENIZER=${TOKENIZER:-$([ -f "$BUNDLE/tokenizer/tokenizer.json" ] && echo "$ROOT/$BUNDLE/tokenizer")}

setup() {  # install what is missing, then print the env line (run by `bash -c` under timeout)
  if [ "$WHEELS_MODE" = 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$BUNDLE"/wheels/*.whl || return 1
  fi
  local liger=""
  if "$PY" -c "import liger_kernel" 2>/dev/null; then
    :
  elif [ "$SMOKE" = 1 ]; then
    liger="a smoke test installs no liger-kernel (its Triton kernels need CUDA)"
  elif [ "$WHEELS_MODE" = 1 ]; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
        "$BUNDLE"/extra/liger_kernel-*.whl; then
      liger="liger-kernel installed from $BUNDLE/extra"
    else
      liger="liger-kernel could not be installed from $BUNDLE/extra: the Liger contenders are skipped"
    fi
  elif timeout 120 "$PY" -m pip install -q --no-deps "liger-kernel==$LIGER_VERSION"; then
    liger="liger-kernel $LIGER_VERSION installed"
  else
    liger="liger-kernel $LIGER_VERSION could not be installed (no network?): the Liger contenders are skipped"
  fi
  local bnb="$SITE/bitsandbytes" cuda
  cuda=$("$PY" -c 'import torch; print((torch.version.cuda or "").replace(".", ""))')
  if [ -n "$cuda" ] && [ -d "$bnb" ] && [ ! -e "$bnb/libbitsandbytes_cuda$cuda.so" ]; then
    export BNB_CUDA_VERSION=130  # the bundle keeps CUDA 13's library only; the later steps read this file
    echo 130 >"$LOG/bnb_cuda_version"
  fi
  GPU_CHECK_NOTE="$liger" "$PY" - <<'EOF'
import os
from importlib.metadata import PackageNotFoundError, version

import torch

def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"

import unitune.cli  # noqa: F401  (the CLI imports: a missing dependency fails this step)
from trl.import_utils import is_liger_kernel_available

cuda = f"CUDA {torch.version.cuda}" if torch.cuda.is_available() else "CPU"
bnb = f" (BNB_CUDA_VERSION={os.environ['BNB_CUDA_VERSION']})" if os.environ.get("BNB_CUDA_VERSION") else ""
note = os.environ.get("GPU_CHECK_NOTE")
print(f"env: torch {torch.__version__} ({cuda}), " + ", ".join(
    f"{n} {v(n)}" for n in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")) + bnb +
    f", liger-kernel {v('liger-kernel')}"
    f"{' (older than TRL needs)' if v('liger-kernel') != 'missing' and not is_liger_kernel_available() else ''}"
    f", vllm {v('vllm')}" + (f"; {note}" if note else ""))
EOF
}

GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
'CPU (smoke test)')" 2>/dev/null) || GPU_NAME="?"
say "gpu_check: $GPU_NAME; python $("$PY" -c 'import platform; print(platform.python_version())'): $ENV_FROM;" \
    "STEPS=$STEPS, budget $BUDGET s"
export -f setup
export PY SITE BUNDLE SMOKE LIGER_VERSION WHEELS_MODE LOG
step env 150 bash -c setup
if [ "$failures" -gt 0 ]; then
  say "gpu_check: the environment is broken (logs/env.log): nothing else runs"
  exit 1
fi
[ -s "$LOG/bnb_cuda_version" ] && export BNB_CUDA_VERSION=$(cat "$LOG/bnb_cuda_version")

# ---------------------------------------------------------------- model
if [ -z "$MODEL" ]; then
  MODEL=$RUNS/model
  step model 120 "$PY" bench/run.py --build_model "$MODEL" ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
    $([ "$SMOKE" = 1 ] && echo --tiny)
fi

# ---------------------------------------------------------------- bench
if [ "$SMOKE" = 1 ]; then
  say "gpu_check: SKIP  bench: bench/run.py --gpu needs CUDA (smoke test); the Liger and vLLM contenders with it"
else
  step bench 360 "$PY" bench/run.py --gpu --model "$MODEL" ${TOKENIZER:+--tokenizer "$TOKENIZER"}
fi

# ---------------------------------------------------------------- train: the five methods, rm and rloo at once
for method in sft dpo orpo kto grpo rm rloo; do
  start "$method" 180 "${UNITUNE[@]}" train --method "$method" --use_qlora "$QLORA" --max_steps "$STEPS" \
    --max_train_samples 64 --output_dir "$RUNS/runs/$method" --save_steps "$STEPS" --model_name "$MODEL"
done
finish
# then the runs that need one of those: GRPO rewarded by the RM run, distillation from the SFT run (QLoRA runs, as
# they trained: merged into the dequantised 4-bit base)
start grpo_rm 180 "${UNITUNE[@]}" train --method grpo --use_qlora "$QLORA" --max_steps "$STEPS" \
  --max_train_samples 64 --output_dir "$RUNS/runs/grpo_rm" --save_steps "$STEPS" --model_name "$MODEL" \
  --reward_model "$RUNS/runs/rm"
start distill 180 "${UNITUNE[@]}" train --method distill --use_qlora "$QLORA" --max_steps "$STEPS" \
  --max_train_samples 64 --output_dir "$RUNS/runs/distill" --save_steps "$STEPS" --model_name "$MODEL" \
  --teacher "$RUNS/runs/sft" --max_completion_length 32
# GRPO whose rollouts call the calculator (TRL's tool loop on the GPU), outside runs/: its eval would give every
# entry the calculator
start grpo_tools 180 "${UNITUNE[@]}" train --method grpo --use_qlora "$QLORA" --max_steps "$STEPS" \
  --max_train_samples 64 --output_dir "$RUNS/tools/grpo_tools" --save_steps "$STEPS" --model_name "$MODEL" \
  --dataset calculator --tools calculator --max_completion_length 96 \
  --chat_template "$("$PY" -c 'from unitune.tools import TOOL_TEMPLATE; print(TOOL_TEMPLATE)')"
finish

# ---------------------------------------------------------------- after: eval, merge, export, chat at once
start eval 150 "${UNITUNE[@]}" eval --runs_dir "$RUNS/runs" --max_samples 32 --base_model "$MODEL"
start merge 120 "${UNITUNE[@]}" merge --run "$RUNS/runs/sft" --output "$RUNS/merged/sft" --dtype bfloat16
start export 120 "${UNITUNE[@]}" export --run "$RUNS/runs/sft" --output "$RUNS/export/sft"
start export_q8 120 "${UNITUNE[@]}" export --run "$RUNS/runs/sft" --output "$RUNS/export/sft-q8" --quant q8_0
start chat 120 bash -c 'set -o pipefail; printf "What is 7 * 6?\n" | "${@:2}" | tee "$1"' _ "$RUNS/chat_reply.txt" \
  "${UNITUNE[@]}" chat --run "$RUNS/runs/sft" --max_new_tokens 24
finish
exit $((failures > 0))
