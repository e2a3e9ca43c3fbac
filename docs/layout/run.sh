# usage: run.sh OUTDIR  (from the repo root, with .venv)
set -euo pipefail
O=$1; mkdir -p $O; F=.venv/bin/fewshot
if [ ! -d /tmp/eq/data ]; then .venv/bin/python docs/layout/corpus.py /tmp/eq/corpus.txt; $F prepare /tmp/eq/corpus.txt --out /tmp/eq/data; .venv/bin/python docs/layout/tasks.py /tmp/eq; fi
if [ -z "${SKIP_TRAIN:-}" ]; then rm -rf $O/run
$F train --data /tmp/eq/data --out $O/run --preset nano --max-steps 700 --eval-every 50 --save-every 100 --precision fp32 --no-progress --seed 0 2> $O/train.log
sha256sum $O/run/model.safetensors | cut -d' ' -f1 > $O/weights.sha; fi
R=${REFERENCE_RUN:-$O/run}   # the "after" side reads the "before" weights, so eval and decoding are compared alone
$F eval $R --tasks 2D+,CL,RW --task-file /tmp/eq/gen.jsonl --task-file /tmp/eq/mc.jsonl --shots 0,1,4 --n 20 --seed 0 --out $O/results.json > /dev/null
$F eval $R --task-file /tmp/eq/mc.jsonl --mc-norm unconditional --shots 0,2 --n 20 --out $O/results_uncond.json > /dev/null
$F eval $R --task-file /tmp/eq/mc.jsonl --mc-norm sum --shots 1 --n 20 --out $O/results_sum.json > /dev/null
$F generate $R --prompt "The cat" --max-tokens 120 --temperature 0 > $O/greedy.txt
$F generate $R --prompt "The cat" --max-tokens 400 --temperature 0.9 --top-k 20 --top-p 0.9 --seed 3 --n 3 --stop "kings" --logprobs 2 > $O/sampled.txt
$F generate $R --prompt "Birds" --max-tokens 600 --temperature 0.8 --seed 5 --frequency-penalty 0.5 > $O/long.txt
.venv/bin/python docs/layout/scores.py $R > $O/scores.txt 2>/dev/null
cd $O && sha256sum results.json results_uncond.json results_sum.json greedy.txt sampled.txt long.txt scores.txt weights.sha > SHA256SUMS
