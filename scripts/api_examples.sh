#!/usr/bin/env bash
# The curl examples of docs/api.md, run against a live server: scripts/api_examples.sh [URL]
# (start one with `finesearch demo` first). Prints each command and its (trimmed) answer.
set -euo pipefail
URL="${1:-http://127.0.0.1:8000}"
IMG_DIR="${IMG_DIR:-data/synth/images/test}"   # images the server has indexed (the demo: the test split)
NEW_DIR="${NEW_DIR:-data/synth/images/val}"    # photos it has not: uploads and the bulk job add new items
IMAGE_ID="${IMAGE_ID:-11000}"                  # an indexed image id
run() { echo "\$ $*"; eval "$@" | python3 -c 'import sys,json; d=sys.stdin.read(); 
try:
    o=json.loads(d)
    if isinstance(o, dict) and isinstance(o.get("results"), list): o["results"]=o["results"][:2]
    print(json.dumps(o, indent=1)[:1500])
except Exception: print(d[:600])'; echo; }
first_png=$(ls "$IMG_DIR" | sed -n 1p)
new_png=$(ls "$NEW_DIR" | sed -n 1p)
run "curl -s $URL/healthz"
run "curl -s $URL/readyz"
run "curl -s -X POST $URL/v1/search/images -H 'content-type: application/json' -d '{\"text\": \"a small red circle left of a large blue square\", \"limit\": 5, \"candidates\": 100}'"
run "curl -s -X POST $URL/v1/search/images -H 'content-type: application/json' -d '{\"text\": \"a red circle\", \"limit\": 3, \"rerank\": false, \"filter\": {\"layout\": \"row\"}}'"
run "curl -s -X POST $URL/v1/search/texts -F image=@$IMG_DIR/$first_png -F limit=3"
run "curl -s -X POST $URL/v1/search/texts -H 'content-type: application/json' -d '{\"image_id\": \"$IMAGE_ID\", \"limit\": 3}'"
run "curl -s -X POST $URL/v1/search/images -H 'content-type: application/json' -d '{\"image_id\": \"$IMAGE_ID\", \"limit\": 3}'"
run "curl -s -X POST $URL/v1/search/images -F image=@$IMG_DIR/$first_png -F limit=3"
run "curl -s -X POST $URL/v1/images -F files=@$NEW_DIR/$new_png -F ids=my-photo-1 -F 'metadata={\"$new_png\": {\"album\": \"demo\"}}'"
run "curl -s $URL/v1/images/my-photo-1"
run "curl -s -o /dev/null -w '%{http_code} %{content_type} %{size_download} bytes\n' $URL/v1/images/my-photo-1/content"
run "curl -s -X POST $URL/v1/texts -H 'content-type: application/json' -d '{\"items\": [{\"id\": \"cap-1\", \"text\": \"a green triangle above a yellow square\", \"metadata\": {\"lang\": \"en\"}}]}'"
tmp=$(mktemp -d); cp "$NEW_DIR"/$(ls "$NEW_DIR" | sed -n 2p) "$tmp/"; printf '{"file": "%s", "id": "bulk-1", "metadata": {"album": "bulk"}}\n' "$(ls "$tmp" | sed -n 1p)" > "$tmp/metadata.jsonl"
tar -czf "$tmp/batch.tar.gz" -C "$tmp" $(ls "$tmp" | grep -v batch)
job=$(curl -s -X POST "$URL/v1/jobs/index" -F archive=@"$tmp/batch.tar.gz")
echo "\$ curl -s -X POST $URL/v1/jobs/index -F archive=@batch.tar.gz"; echo "$job"; echo
job_id=$(echo "$job" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
for _ in $(seq 60); do  # until it has finished (a second or two)
  curl -s "$URL/v1/jobs/$job_id" | grep -qE '"state": ?"(succeeded|failed)"' && break; sleep 0.5
done
run "curl -s $URL/v1/jobs/$job_id"
run "curl -s -X DELETE -o /dev/null -w '%{http_code}\n' $URL/v1/images/my-photo-1"
run "curl -s -X DELETE -o /dev/null -w '%{http_code}\n' $URL/v1/images/bulk-1"
run "curl -s -X DELETE -o /dev/null -w '%{http_code}\n' $URL/v1/texts/cap-1"
run "curl -s $URL/v1/stats"
run "curl -s -X POST $URL/v1/search/images -H 'content-type: application/json' -d '{\"text\": \"\", \"limit\": 500}'"
run "curl -s -X POST $URL/v1/search/images -H 'content-type: text/plain' -d 'a red circle'"
run "curl -s $URL/v1/images/no-such-id"
run "curl -s $URL/metrics | grep -E '^finesearch_(index_items|candidates_reranked_count)'"
rm -rf "$tmp"
