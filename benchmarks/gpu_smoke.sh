#!/usr/bin/env bash
# One prepared script for a lent CUDA machine (see README "GPU"): short CUDA runs of the
# runner first (in parallel: one GPU, many cores), then the benchmarks on a quiet GPU.
#
#   OUT=/some/dir bash benchmarks/gpu_smoke.sh
#
# Every check prints "CHECK <name> PASS|FAIL <detail>"; the results (benchmarks/results/
# *gpu*, the smoke runs' dirs without checkpoints) land in $OUT/gpu_run.tgz. Options:
# MNIST1D=1 also runs both MNIST-1D presets (docs/mnist1d/), RACE=1 the raced MNIST-1D
# sweep (README "Racing"), BENCHES="gpu gpu_compile lm fused" picks the benchmarks (lm:
# bench_lm.py, the GPT against a nanoGPT-style loop, bf16 + compile). On a machine without
# CUDA it still runs (on CPU), so the script itself is exercised before device time is spent.
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PY:-python3}
S=${SMOKE_DIR:-/tmp/schedlab_smoke}
BUDGET_S=${BUDGET_S:-480}   # the benchmarks get what the smoke runs leave of this
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
rm -rf "$S" && mkdir -p "$S" "$OUT"

left() { local s=$((BUDGET_S - ($(date +%s) - T0))); echo $((s > 60 ? s : 60)); }
run() {  # run <name> <timeout_s> cmd...: output to $S/<name>.log, rc and seconds to the log
    local name=$1 t=$2; shift 2
    local t1; t1=$(date +%s)
    timeout "$t" "$@" >"$S/$name.log" 2>&1
    local rc=$?
    echo "STEP $name rc=$rc $(($(date +%s) - t1))s" | tee -a "$S/$name.log"
    return $rc
}

echo "== machine"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

echo "== smoke runs (parallel)"
R="$PY -m runner"
run default 150 $R epochs=3 hydra.run.dir=$S/default &
run amp_compile 240 $R model=resnet18 data=fake data.train_size=2048 data.batch_size=256 \
    trainer.amp=true trainer.channels_last=true trainer.compile=true epochs=2 \
    scheduler=onecycle logger=none hydra.run.dir=$S/amp_compile &
run lenet_amp 150 $R model=lenet trainer.amp=true epochs=3 logger=tensorboard \
    hydra.run.dir=$S/lenet_amp &
(   # exact resume on CUDA: 4 epochs straight vs 2 epochs, then resume= extended to 4
    D="model=lenet scheduler=step trainer.deterministic=true logger=none"
    run full 150 $R $D epochs=4 hydra.run.dir=$S/full
    run half 150 $R $D epochs=2 hydra.run.dir=$S/half &&
        run resumed 150 $R resume=$S/half epochs=4
) &
(   # the streamed path on CUDA (DataLoader workers, pinned memory, non_blocking copies):
    # exact resume with 2 workers, 4 epochs straight vs 2 then resume= to 4
    D="data=dataset data.in_memory=false data.num_workers=2 model=lenet scheduler=step trainer.deterministic=true logger=none"
    run stream_full 150 $R $D epochs=4 hydra.run.dir=$S/stream_full
    run stream_half 150 $R $D epochs=2 hydra.run.dir=$S/stream_half &&
        run stream_resumed 150 $R resume=$S/stream_half epochs=4
) &
(   # the fused launcher on CUDA vs the basic one
    F="model=lenet optimizer=adam scheduler=step,cosine,plateau seed=0,1 epochs=3 logger=none"
    run fused 200 $R -m hydra/launcher=fused $F hydra.sweep.dir=$S/fused
    run basic 200 $R -m $F hydra.sweep.dir=$S/basic
) &
# a language model on CUDA (about a minute): nanoGPT's shakespeare-char size on the bundled
# text, bf16 autocast + torch.compile, per-step cosine; its rows must carry tokens/s and MFU
run lm_gpt 240 $R model=gpt data=text model.n_layer=6 model.n_head=6 model.n_embd=384 \
    data.block_size=256 data.batch_size=64 data.tokens_per_epoch=3276800 epochs=3 \
    optimizer=adamw scheduler.interval=step trainer.grad_clip_norm=1.0 trainer.amp=true \
    trainer.compile=true logger=none hydra.run.dir=$S/lm_gpt &
run lr_find 150 $PY -m runner.lr_find model=lenet hydra.run.dir=$S/lr_find &
run ddp 150 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m runner model=lenet \
    trainer.strategy=ddp epochs=2 logger=none hydra.run.dir=$S/ddp &
if [ "${MNIST1D:-0}" = 1 ]; then  # docs/mnist1d/: the two MNIST-1D presets' reports, anew
    run mnist1d_schedules 300 $R -m +experiment=mnist1d_schedules logger=none \
        hydra.sweep.dir=$S/mnist1d_schedules &
    run mnist1d_models 400 $R -m +experiment=mnist1d_models logger=none \
        hydra.sweep.dir=$S/mnist1d_models &
fi
wait
echo "== checks"
$PY - "$S" <<'EOF'
import json, sys

import yaml
from pathlib import Path

S = Path(sys.argv[1])

def rows(d):
    lines = (d / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if "kind" not in r]  # epochs

def status(d):
    try:
        return json.loads((d / "status.json").read_text())["status"]
    except Exception as e:  # noqa: BLE001 - a check reports, never stops the others
        return f"unreadable ({e})"

def check(name, ok, detail=""):
    print(f"CHECK {name} {'PASS' if ok else 'FAIL'} {detail}")

def on_device(d):
    log = (d / "train.log").read_text() if (d / "train.log").exists() else ""
    return next((ln.split(" - ", 1)[-1] for ln in log.splitlines() if " on " in ln), "?")

halves = {"resumed": "half", "stream_resumed": "stream_half"}
for name in ("default", "amp_compile", "lenet_amp", "full", "resumed", "stream_full",
             "stream_resumed", "lr_find", "ddp", "lm_gpt"):
    d = S / halves.get(name, name)
    st = "completed" if name == "lr_find" else status(d)
    ok = (d / "lr_find.csv").exists() if name == "lr_find" else st == "completed"
    check(name, ok, f"status={st} | {on_device(d)}")
check("wandb_offline", any((S / "default" / "wandb").glob("offline-run-*")))
check("tensorboard", any((S / "lenet_amp").rglob("events.out.tfevents.*")))
for name, full, half in (("resume_exact", "full", "half"),
                         ("stream_resume_exact", "stream_full", "stream_half")):
    try:
        a, b = rows(S / full), rows(S / half)
        keys = [k for k in a[0] if not k.startswith("time/")]
        diff = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys)
        check(name, len(a) == len(b) == 4 and diff == 0.0, f"max |diff|={diff:.3g}")
    except Exception as e:  # noqa: BLE001
        check(name, False, repr(e))
try:  # the language model's rows: tokens/s always, MFU on CUDA (runner/train/lm.py)
    import torch

    last = rows(S / "lm_gpt")[-1]
    rate, mfu = last.get("train/tokens_per_s"), last.get("train/mfu")
    cuda = torch.cuda.is_available()
    check("lm_tokens_mfu", rate is not None and (mfu is not None or not cuda),
          f"train/tokens_per_s={rate} train/mfu={mfu} val/loss={last['val/loss']:.4f} "
          f"val/gap={last.get('val/gap')}" + ("" if cuda else " (no CUDA: no MFU)"))
except Exception as e:  # noqa: BLE001
    check("lm_tokens_mfu", False, repr(e))
try:
    def jobs(root):
        out = {}
        for d in sorted(p.parent for p in root.rglob("metrics.jsonl")):
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            out[(cfg["scheduler"]["name"], cfg["seed"])] = rows(d)
        return out
    fu, ba = jobs(S / "fused"), jobs(S / "basic")
    worst = max(abs(x[k] - y[k]) / max(1e-12, abs(y[k]))
                for key in ba for x, y in zip(fu[key], ba[key])
                for k in ("val/loss", "train/loss"))
    check("fused_vs_basic", len(fu) == len(ba) == 6 and worst < 1e-2,
          f"{len(fu)} fused / {len(ba)} basic jobs, worst rel diff {worst:.2e}")
except Exception as e:  # noqa: BLE001
    check("fused_vs_basic", False, repr(e))
EOF

if [ "${RACE:-0}" = 1 ]; then  # the README's raced MNIST-1D sweep (hydra/sweeper=race)
    echo "== race ($(left)s left)"
    run race $(( $(left) / 2 )) $R -m hydra/sweeper=race +experiment=mnist1d_schedules \
        hydra.sweeper.max_seeds=10 logger=none hydra.sweep.dir=$S/race
    tail -n 5 "$S/race.log"
fi

echo "== benchmarks ($(left)s left)"
BENCHES=${BENCHES:-"gpu gpu_compile lm fused"}  # which of them to run
for b in $BENCHES; do
    case $b in
        gpu) run bench_gpu $(( $(left) / 3 )) $PY benchmarks/bench_gpu.py ;;
        gpu_compile) run bench_gpu_compile $(( $(left) * 2 / 3 )) \
            $PY benchmarks/bench_gpu.py --compile --repeats 3 ;;
        lm) run bench_lm $(( $(left) / 2 )) $PY benchmarks/bench_lm.py --repeats 3 ;;
        fused) run bench_fused $(left) $PY benchmarks/bench_fused.py --repeats 1 ;;
    esac
done
cat $S/bench_*.log 2>/dev/null

echo "== collect"
# one archive (the device tool returns few files): the logs, the benchmark results, and
# every run dir without checkpoints, W&B or TensorBoard files (the sweeps' reports can be
# written again from them: python -m runner.sweep.report <dir>)
for f in $S/*.log; do echo "##### $f"; tail -n 25 "$f"; done >"$S/smoke_logs.txt"
mkdir -p "$S/results" && cp benchmarks/results/*gpu* "$S/results/" 2>/dev/null
tar czf "$OUT/gpu_run.tgz" -C "$S" --exclude='*.pt' --exclude='wandb' --exclude='tensorboard' .
echo "done in $(($(date +%s) - T0))s"
