#!/usr/bin/env bash
# The demo pipeline on the synthetic data from examples/make_sample.py.
# Usage: examples/pipeline.sh DEMO_DIR STILL [PYTHON]
# Each step reads the previous step's JSONL and prints its one-line summary on stderr.
set -euo pipefail
dir=${1:-demo-out}
still=${2:-still}
python=${3:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

echo "== 1. dedup: exact duplicate lines and near-duplicate responses (key = query+response)"
"$still" dedup --key query+response "$dir/raw.jsonl" -o "$dir/1-unique.jsonl"

echo "== 2. dedup: at most 4 responses per near-identical query (OpenThoughts-style)"
"$still" dedup --key query --max-per-key 4 --clusters "$dir/2-clusters.jsonl" \
  "$dir/1-unique.jsonl" -o "$dir/2-per-query.jsonl"

echo "== 3. decontam: drop records that contain a question of the demo benchmark (report: hit items)"
"$still" decontam --against "$dir/bench.jsonl" --report "$dir/3-decontam-report.json" \
  "$dir/2-per-query.jsonl" -o "$dir/3-decontam.jsonl"

echo "== 4. verify: math answers (exact paths, math-verify in killable workers), code in the sandbox"
"$still" verify --workers 2 "$dir/3-decontam.jsonl" -o "$dir/4-verified.jsonl"

echo "== 5. grade: per query, the teacher's pass rate, mean score and CV over its responses; difficulty by pass-rate band"
"$still" grade "$dir/4-verified.jsonl" -o "$dir/5-graded.jsonl"

echo "== 6. sample: verified-correct responses only, one per query, as a math:40 / code:20 mix"
"$still" sample --passing --per-query 1 --quota domain=math:40,code:20 --seed 7 \
  "$dir/5-graded.jsonl" -o "$dir/6-sample.jsonl"

echo "== 7. sample: the queries the teacher finds hard (pass rate 0.25..0.75), a curriculum by difficulty"
"$still" sample --pass-rate 0.25..0.75 --difficulty-weights 2=1,3=1,4=1 -n 30 --seed 7 \
  "$dir/5-graded.jsonl" -o "$dir/7-hard.jsonl"

echo "== 8. generate: 2 responses per query for 6 sampled queries, from a tiny RANDOM model built here"
echo "   (tests/tiny_model.py: random weights, so its answers are random noise; this shows the plumbing)"
"$python" "$here/tests/tiny_model.py" "$dir/tiny-model" > /dev/null 2>&1
head -n 6 "$dir/6-sample.jsonl" > "$dir/8-queries.jsonl"
"$still" generate -m "$dir/tiny-model" -k 2 --max-tokens 24 --seed 7 --device cpu \
  "$dir/8-queries.jsonl" -o "$dir/8-generated.jsonl"

echo "== 9. verify the generated responses (random text cut at 24 tokens: expect truncated, never correct)"
"$still" verify "$dir/8-generated.jsonl" -o "$dir/9-generated-verified.jsonl"

echo "== 10. grade with a student generating (ZMath): the tiny RANDOM model answers 6 teacher lines' queries"
echo "    twice each; levels: what the student solves is easy, the rest by the teacher's pass rate"
head -n 6 "$dir/5-graded.jsonl" > "$dir/10-teacher.jsonl"
"$still" grade -m "$dir/tiny-model" -k 2 --max-tokens 24 --seed 7 --device cpu \
  --levels adaptive --level-model "$dir/tiny-model" "$dir/10-teacher.jsonl" -o "$dir/10-student-graded.jsonl"

echo
echo "demo outputs in $dir/:"
for f in "$dir"/[0-9]*.jsonl; do
  printf '  %-28s %6d records\n' "$(basename "$f")" "$(wc -l < "$f")"
done
echo "planted: $(tr -d '\n ' < "$dir/truth.json")"
