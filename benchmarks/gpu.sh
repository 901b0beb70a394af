#!/usr/bin/env bash
# jbptt on a GPU in one command (`make gpu`): install jax with CUDA, check
# that jbptt's gradients equal autodiff there (the diagonal cells in float64
# too), time value+grad against jax.value_and_grad, cuDNN's LSTM and PyTorch
# CUDA, the diagonal recurrences at T >= 16 384, the T = 100 000
# checkpointed run and online training, and write ONE summary,
# OUT/gpu_results.md (device, versions, every step's status and tables).
#
# Usage: bash benchmarks/gpu.sh [--quick] [--out DIR]
#   --quick     tiny shapes (seconds per step; what the CPU test runs)
#   --out DIR   output folder (default benchmarks/gpu_results)
#
# Steps, each time-boxed with `timeout`; a step that fails or times out is
# recorded and the next one runs:
#   install  venv + "jax[cuda12]==<the venv's jax version>" (own time box)
#   device   jax.devices() and versions
#   a check  python -m benchmarks.gpu_check: gradients equal autodiff
#   a diag   python -m benchmarks.gpu_check --cases lru,min_gru --dtypes float64:
#            the diagonal cells' gradients equal autodiff to 1e-10
#   b grad   python -m benchmarks.bench_grad --parts grad (GPU shapes, cuDNN, torch CUDA)
#   b diag   python -m benchmarks.bench_diagonal --gpu --parts grad: LRU and
#            minGRU at T >= 16 384, the parallel path against autodiff of a
#            lax.scan (target >= 5x) and the floor
#   c long   python -m benchmarks.bench_grad --parts long (T = 100 000, checkpointed),
#            LSTM and Elman as two steps, so that one timing out keeps the other
#   d online python -m benchmarks.bench_online (GPU-sized config)
#   e rtrl   python -m benchmarks.bench_diagonal_rtrl --batch 8: exact diagonal
#            RTRL step by step and in 64-step windows against a forward step
#            (target <= 3x), LRU and minGRU at H = 256
#   f stack  python -m benchmarks.bench_diagonal_rtrl --layers 2: layer-wise
#            RTRL on two-layer stacks, step by step and in 64-step windows
# Steps device..stack share one budget (JBPTT_GPU_BUDGET_S, default 480 s =
# 8 minutes); a step left with under 5 s is skipped. With --quick (the CPU
# test, often on a loaded machine) the budget and every time box are doubled.
#
# Environment:
#   JBPTT_GPU_SKIP_INSTALL=1   use the interpreter as it is (no venv, no pip)
#   JBPTT_GPU_PYTHON=PATH      interpreter to use instead of $VENV/bin/python
#                              (e.g. an image's python3 that has jax with CUDA)
#   VENV=.venv                 the project venv (made by `make venv`)
#   JBPTT_GPU_JAX_EXTRA=cuda12 the jax extra to install (cuda12, cuda13)
#   JBPTT_GPU_BUDGET_S=480     seconds for the steps after install (960 with --quick)
#   JBPTT_GPU_INSTALL_S=600    seconds for the install step
#   JBPTT_GPU_STEP_S=N         cap every step at N seconds (default: none)
#   JBPTT_GPU_SHAPES           grad part's shapes, "T,B,I,H T,B,I,H"
#   JBPTT_GPU_DIAGONAL_SHAPES  bench_diagonal's shapes, "T,B,I,H T,B,I,H"
#   JBPTT_GPU_LONG_VARIANTS    long part's variants (bench_grad --long-variants)
#   JBPTT_GPU_ONLINE_ARGS      bench_online's shape flags
# Exit status: 0 when every step is ok (the install may be skipped), else 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
OUT=benchmarks/gpu_results
ARGS="$*"
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (takes --quick and --out DIR)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
STATUS=$OUT/.status
rm -rf "$STATUS"
mkdir -p "$LOGS" "$STATUS"

VENV=${VENV:-.venv}
EXTRA=${JBPTT_GPU_JAX_EXTRA:-cuda12}
BUDGET=${JBPTT_GPU_BUDGET_S:-$([ "$QUICK" = 1 ] && echo 960 || echo 480)}
INSTALL_S=${JBPTT_GPU_INSTALL_S:-600}
STEP_S=${JBPTT_GPU_STEP_S:-}
if [ -n "${JBPTT_GPU_PYTHON:-}" ]; then
    PY=$JBPTT_GPU_PYTHON
elif [ -x "$VENV/bin/python" ] || [ "${JBPTT_GPU_SKIP_INSTALL:-0}" != 1 ]; then
    PY=$VENV/bin/python
else
    PY=python3
fi
# jbptt, benchmarks and experiments import from this checkout even where
# jbptt is not installed (an image's own python).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX takes 75% of GPU memory at start by default; PyTorch CUDA shares the
# process in the grad step, so allocate on demand instead.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
if [ "$QUICK" = 1 ]; then
    # Tiny programs: compile time dominates, and this changes no result.
    export XLA_FLAGS=${XLA_FLAGS:---xla_backend_optimization_level=0}
fi
START=$(date -u '+%Y-%m-%d %H:%M')

# ---------------------------------------------------------------- steps ---
STEPS=(install device check check_diagonal grad diagonal long_lstm long_elman online rtrl stack)
declare -A TITLE=(
    [install]="install jax[$EXTRA]"
    [device]="device and versions"
    [check]="a. gradients equal autodiff (benchmarks.gpu_check)"
    [check_diagonal]="a. diagonal cells' gradients equal autodiff, float64 (benchmarks.gpu_check)"
    [grad]="b. value+grad against jax.value_and_grad, cuDNN LSTM, PyTorch CUDA"
    [diagonal]="b. diagonal recurrences at T >= 16 384 (benchmarks.bench_diagonal)"
    [long_lstm]="c. T = 100 000, checkpointed: LSTM (bench_grad --parts long)"
    [long_elman]="c. T = 100 000, checkpointed: Elman (bench_grad --parts long)"
    [online]="d. online training (benchmarks.bench_online)"
    [rtrl]="e. exact diagonal RTRL against a forward step (benchmarks.bench_diagonal_rtrl)"
    [stack]="f. layer-wise RTRL on two-layer diagonal stacks (bench_diagonal_rtrl --layers 2)"
)
# Each step's share of the budget (seconds); what is left caps it further.
# The diagonal steps took their shares from the grad, long and online steps,
# so that the total stays the budget.
declare -A CAP=([device]=45 [check]=50 [check_diagonal]=30 [grad]=70
    [diagonal]=70 [long_lstm]=50 [long_elman]=50 [online]=65 [rtrl]=25 [stack]=25)
if [ "$QUICK" = 1 ]; then
    for step in "${!CAP[@]}"; do CAP[$step]=$((2 * CAP[$step])); done
fi
# The markdown a step writes, shown under its heading in the summary.
declare -A TABLE=(
    [device]=$OUT/device.md
    [check]=$OUT/check/gpu_check.md
    [check_diagonal]=$OUT/check_diagonal/gpu_check.md
    [grad]=$OUT/grad/RESULTS.md
    [diagonal]=$OUT/diagonal/bench_diagonal.md
    [long_lstm]=$OUT/long_lstm/RESULTS.md
    [long_elman]=$OUT/long_elman/RESULTS.md
    [online]=$OUT/online/bench_online.md
    [rtrl]=$OUT/rtrl/bench_diagonal_rtrl.md
    [stack]=$OUT/stack/bench_diagonal_rtrl.md
)
declare -A CMD

# record STEP STATUS SECONDS NOTE
record() { printf '%s\t%s\t%s\n' "$2" "$3" "$4" >"$STATUS/$1"; }
field() { [ -f "$STATUS/$1" ] && cut -f"$2" "$STATUS/$1" || true; }

# The summary, rewritten after every step: a run cut short still leaves it.
render() {
    local md=$OUT/gpu_results.md.tmp step st
    {
        echo "# jbptt on GPU: benchmarks/gpu.sh"
        echo
        echo "\`bash benchmarks/gpu.sh $ARGS\`, started $START UTC, written $(date -u '+%Y-%m-%d %H:%M:%S') UTC$1."
        echo "Interpreter \`$PY\`; quick: $([ "$QUICK" = 1 ] && echo yes || echo no); budget ${BUDGET} s for steps a–f and the device step."
        echo
        echo "## Device and versions"
        echo
        if [ -s "$OUT/device.md" ]; then cat "$OUT/device.md"; else echo "Not known: the device step has not run or failed (see below)."; fi
        echo
        echo "## Steps"
        echo
        echo "| step | status | seconds | note |"
        echo "|---|---|---|---|"
        for step in "${STEPS[@]}"; do
            st=$(field "$step" 1)
            echo "| ${TITLE[$step]} | ${st:-pending} | $(field "$step" 2) | $(field "$step" 3) |"
        done
        for step in "${STEPS[@]}"; do
            st=$(field "$step" 1)
            # install and device: a section only to show what went wrong
            case $step:$st in install:* | device:*) [ -z "$st" ] || [ "$st" = ok ] || [ "$st" = skipped ] && continue ;; esac
            echo
            echo "## ${TITLE[$step]}"
            echo
            echo "Status: **${st:-pending}**$([ -n "$st" ] && echo " ($(field "$step" 2) s)"). Command: \`${CMD[$step]:-}\`"
            echo
            if [ -s "${TABLE[$step]:-}" ]; then
                # headings of the step's own file go two levels down
                sed 's/^#/###/' "${TABLE[$step]}"
                echo
            fi
            if [ -n "$st" ] && [ "$st" != ok ] && [ -s "$LOGS/$step.log" ]; then
                echo "Last lines of \`logs/$step.log\`:"
                echo
                echo '```'
                tail -n 25 "$LOGS/$step.log" | tr '\r' '\n' | tail -n 25
                echo '```'
            fi
        done
    } >"$md"
    mv "$md" "$OUT/gpu_results.md"
}

DEADLINE=0
# run_step STEP CAP CMD...: run CMD under `timeout`, log it, record its status.
run_step() {
    local step=$1 cap=$2 left t0 rc dt st note
    shift 2
    CMD[$step]=${CMD[$step]:-$*}
    # an earlier run's table must not pass for this run's
    [ -z "${TABLE[$step]:-}" ] || rm -f "${TABLE[$step]}"
    if [ "$step" != install ]; then
        left=$((DEADLINE - $(date +%s)))
        if [ "$left" -lt 5 ]; then
            record "$step" skipped 0 "the ${BUDGET} s budget is spent"
            render " (in progress)"
            return 0
        fi
        [ "$cap" -gt "$left" ] && cap=$left
    fi
    [ -n "$STEP_S" ] && [ "$cap" -gt "$STEP_S" ] && cap=$STEP_S
    echo "== ${TITLE[$step]} (time box ${cap} s): ${CMD[$step]}"
    t0=$(date +%s)
    set +e
    timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$LOGS/$step.log"
    rc=${PIPESTATUS[0]}
    set -e
    dt=$(($(date +%s) - t0))
    case $rc in
    0) st=ok note="" ;;
    124 | 137) st="timed out" note="stopped after the ${cap} s time box" ;;
    *) st=failed note="exit status $rc; the log's last lines are below" ;;
    esac
    [ "$step" = device ] && [ "$st" != ok ] && note="exit status $rc: $(tail -n 1 "$LOGS/$step.log" | tr '|' '/')"
    record "$step" "$st" "$dt" "$note"
    render " (in progress)"
}

# -------------------------------------------------------------- install ---
install_script='
set -euo pipefail
if [ -z "${JBPTT_GPU_PYTHON:-}" ]; then
    if command -v make >/dev/null; then
        make venv VENV="$VENV"
    else
        test -x "$VENV/bin/python" || python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q -e ".[dev,experiments]"
    fi
fi
version=$("$PY" -c "import jax; print(jax.__version__)")
echo "installing jax[$EXTRA]==$version, the version of the jax installed"
"$PY" -m pip install -q "jax[$EXTRA]==$version"
'
if [ "${JBPTT_GPU_SKIP_INSTALL:-0}" = 1 ]; then
    CMD[install]="(none)"
    record install skipped 0 "JBPTT_GPU_SKIP_INSTALL=1"
    render " (in progress)"
else
    export VENV PY EXTRA
    CMD[install]="pip install jax[$EXTRA]==<the venv's jax version>"
    run_step install "$INSTALL_S" bash -c "$install_script"
fi

DEADLINE=$(($(date +%s) + BUDGET))

# --------------------------------------------------------------- device ---
device_script='
import os, platform, subprocess, sys
import jax
devices = jax.devices()
print("jax.devices():", devices)
kind, backend = devices[0].device_kind, jax.default_backend()
try:
    import torch
    cuda = torch.cuda.is_available()
    tv = f"{torch.__version__} (CUDA available: {cuda}"
    tv += f", {torch.cuda.get_device_name(0)})" if cuda else ")"
except ImportError:
    tv = "not importable"
import jbptt, numpy
jaxlib = getattr(jax.lib, "__version__", "?")
lines = [
    f"- device: **{kind}** ({len(devices)} device(s)), jax backend `{backend}`",
    f"- jax.devices(): `{devices}`",
    f"- python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib}, "
    f"jbptt {jbptt.__version__}, numpy {numpy.__version__}, torch {tv}",
    f"- host: {platform.platform()}, {os.cpu_count()} logical cores",
]
try:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    if smi.returncode == 0:
        lines.append(f"- nvidia-smi: {smi.stdout.strip()}")
except (OSError, subprocess.TimeoutExpired):
    pass
if backend == "cpu":
    lines.append("- **no accelerator**: every step below ran on the CPU")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
'
CMD[device]="$PY -c <print jax.devices() and the versions>"
run_step device "${CAP[device]}" "$PY" -c "$device_script" "$OUT/device.md"

# ---------------------------------------------------------- a-f: checks ---
if [ "$QUICK" = 1 ]; then
    check=(--quick --cases elman)
    check_diagonal=(--quick --cases lru,min_gru)
    read -r -a shapes <<<"${JBPTT_GPU_SHAPES:-8,2,3,4}"
    read -r -a diagonal_shapes <<<"${JBPTT_GPU_DIAGONAL_SHAPES:-16,2,3,4}"
    diagonal=(--quick --repeats 1)
    grad=(--quick --cells lstm --repeats 1 --shapes "${shapes[@]}")
    long=(--quick --repeats 1)
    online=(--quick --cells elman)
    rtrl=(--quick)
    stack=(--quick --layers 2)
else
    check=(--cases elman,lstm,gru,stack,masked)
    check_diagonal=(--cases lru,min_gru)
    read -r -a shapes <<<"${JBPTT_GPU_SHAPES:-1000,64,128,512 200,256,256,1024}"
    read -r -a diagonal_shapes <<<"${JBPTT_GPU_DIAGONAL_SHAPES:-16384,1,16,16 16384,8,256,256}"
    diagonal=(--repeats 2)
    grad=(--cells elman,lstm,gru --repeats 5 --shapes "${shapes[@]}")
    long=(--repeats 1)
    read -r -a online <<<"${JBPTT_GPU_ONLINE_ARGS:---T 2048 --batch 256 --hidden 512 --inputs 128 --outputs 16 --ks 32}"
    rtrl=(--batch 8 --repeats 7)
    stack=(--batch 8 --repeats 7 --layers 2)
fi
long+=(--long-variants "${JBPTT_GPU_LONG_VARIANTS:-jbptt-sqrt,jax-sqrt}")

run_step check "${CAP[check]}" "$PY" -m benchmarks.gpu_check "${check[@]}" --out "$OUT/check"
run_step check_diagonal "${CAP[check_diagonal]}" "$PY" -m benchmarks.gpu_check \
    --dtypes float64 "${check_diagonal[@]}" --out "$OUT/check_diagonal"
run_step grad "${CAP[grad]}" "$PY" -m benchmarks.bench_grad --parts grad --processes 1 \
    --cudnn --torch-device cuda "${grad[@]}" --out "$OUT/grad"
run_step diagonal "${CAP[diagonal]}" "$PY" -m benchmarks.bench_diagonal --gpu --parts grad \
    --cells lru,min_gru "${diagonal[@]}" --shapes "${diagonal_shapes[@]}" --out "$OUT/diagonal"
for cell in lstm elman; do
    run_step "long_$cell" "${CAP[long_$cell]}" "$PY" -m benchmarks.bench_grad --parts long \
        --cells "$cell" "${long[@]}" --out "$OUT/long_$cell"
done
run_step online "${CAP[online]}" "$PY" -m benchmarks.bench_online --torch-device cuda \
    "${online[@]}" --out "$OUT/online"
run_step rtrl "${CAP[rtrl]}" "$PY" -m benchmarks.bench_diagonal_rtrl "${rtrl[@]}" \
    --out "$OUT/rtrl"
run_step stack "${CAP[stack]}" "$PY" -m benchmarks.bench_diagonal_rtrl "${stack[@]}" \
    --out "$OUT/stack"

render ""
echo "wrote $OUT/gpu_results.md"
for step in "${STEPS[@]}"; do
    case $step:$(field "$step" 1) in *:ok | install:skipped) ;; *) exit 1 ;; esac
done
