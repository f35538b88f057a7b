#!/usr/bin/env bash
# The model half of the demo, on the data half's output (examples/pipeline.sh).
# Usage: examples/models.sh DEMO_DIR STILL [PYTHON]
# The models are tiny and RANDOM (tests/tiny_model.py: 2 layers, hidden 64, a tokenizer trained
# here), so every answer is noise: this shows each model command's plumbing and accounting on a
# CPU in about a minute, not accuracy (`make showcase` trains models that are meant to learn).
set -euo pipefail
dir=${1:-demo-out}
still=${2:-still}
python=${3:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
m="$dir/models"
mkdir -p "$m"

run() {
  local shown=("still" "${@:2}")
  printf '\n$ %s\n' "${shown[*]}"
  "$@"
}

echo
echo "== 8. three tiny RANDOM models (one tokenizer, different weights): a teacher and two students"
for s in 0 1 2; do "$python" "$here/tests/tiny_model.py" "$m/tiny-$s" --seed "$s" > /dev/null 2>&1; done
head -n 6 "$dir/6-sample.jsonl" > "$m/queries.jsonl"

echo
echo "== 9. generate: 2 responses per query for 6 sampled queries from the random teacher"
run "$still" generate -m "$m/tiny-0" -k 2 --max-tokens 24 --seed 7 --device cpu \
  "$m/queries.jsonl" -o "$m/9-generated.jsonl"

echo
echo "== 10. verify them (random text cut at 24 tokens: expect truncated, never correct)"
run "$still" verify "$m/9-generated.jsonl" -o "$m/10-verified.jsonl"

echo
echo "== 11. grade with a student generating (ZMath): what the student solves is easy, the rest by the teacher's pass rate"
head -n 6 "$dir/5-graded.jsonl" > "$m/teacher.jsonl"
run "$still" grade -m "$m/tiny-1" -k 2 --max-tokens 24 --seed 7 --device cpu \
  --levels adaptive --level-model "$m/tiny-1" "$m/teacher.jsonl" -o "$m/11-student-graded.jsonl"

echo
echo "== 12. distill-train: a few SFT steps of student 1 on the selected traces (metrics on stdout)"
run "$still" distill-train --model "$m/tiny-1" --out "$m/student-sft" --max-steps 3 --log-steps 1 \
  --lr 1e-3 --max-length 1024 --truncate truncate "$dir/6-sample.jsonl" > "$m/12-metrics.jsonl"
cat "$m/12-metrics.jsonl"

echo
echo "== 13. merge: the trained student and student 2 onto student 1 with TIES (one JSON line: inputs, shards, hashes)"
run "$still" merge --method ties --base "$m/tiny-1" --density 0.5 --seed 7 \
  "$m/student-sft" "$m/tiny-2" -o "$m/merged" > "$m/13-merge.jsonl"

echo
echo "== 14. eval: the merged student on 10 demo benchmark problems, 2 samples each, report and plot"
head -n 10 "$dir/bench.jsonl" > "$m/bench10.jsonl"
run "$still" eval --model "$m/merged" --bench "demo=$m/bench10.jsonl" -k 2 --max-tokens 16 --seed 7 \
  --report "$m/14-report.md" --plot "$m/14-pass-at-k.png" -o "$m/14-eval.jsonl"
head -n 3 "$m/14-report.md"

echo
echo "== 15. models that judge data (tiny random models: the numbers show the plumbing, not quality)"
echo "   score: perplexity under a reference model, length and repetition; sample --where filters on them"
run "$still" score -m "$m/tiny-0" --max-length 512 --batch-size 4 "$dir/6-sample.jsonl" -o "$m/15-scored.jsonl"
run "$still" sample --where 'score.rep_ngram_frac<0.5' --where 'score.top_ngram_count<=20' \
  "$m/15-scored.jsonl" -o "$m/15-low-repetition.jsonl"
echo "   verify --reward-model: responses with no reference answer or tests scored by a reward model"
"$python" "$here/tests/tiny_model.py" "$m/tiny-reward" --reward > /dev/null 2>&1
"$python" -c 'import json
for q, r in [("Write a haiku about sums", "numbers meet and add"), ("Explain carrying", "carry the one"),
             ("Say hi", "hi")]:
    print(json.dumps({"query": q, "response": r, "domain": "other"}))' > "$m/15-open.jsonl"
run "$still" verify --reward-model "$m/tiny-reward" --reward-threshold 0.5 "$m/15-open.jsonl" \
  -o "$m/15-rewarded.jsonl"
echo "   dedup --semantic: SemDeDup over a model's embeddings, after the exact and MinHash stages"
echo "   (a random model's embeddings are all alike: a real embedding model keeps the default threshold)"
run "$still" dedup --semantic "$m/tiny-0" --semantic-threshold 0.995 --embeddings "$m/15-embeddings.npz" \
  "$dir/6-sample.jsonl" -o "$m/15-semantic.jsonl"

echo
echo "model outputs in $m/: 9-generated.jsonl, 11-student-graded.jsonl, student-sft/, merged/, 14-report.md, 14-pass-at-k.png,
15-scored.jsonl, 15-rewarded.jsonl, 15-semantic.jsonl"
echo "(random models: expect truncated/no_answer verdicts and 0% accuracy; \`make showcase\` trains models that are meant to learn)"
