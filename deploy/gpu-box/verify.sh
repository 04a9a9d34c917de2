#!/bin/bash
#
# deploy/gpu-box/verify.sh: is the GPU box ready for igny8_ai?  Checks
# that Ollama has the four Qwen3 models, that ComfyUI runs on a GPU (free
# and total VRAM), that each server makes something (a few tokens from
# Ollama, one SDXL-Lightning image from ComfyUI), and that ComfyUI offers
# every model file the shipped workflows load.
#
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: verify.sh [--no-generate] [--print-graph] [--help]

  --no-generate   skip the two generations (only lists and VRAM)
  --print-graph   print the workflow graph of the image check and exit

Environment:
  OLLAMA_URL      default http://127.0.0.1:11434
  COMFYUI_URL     default http://127.0.0.1:8188
  VERIFY_TEXT_MODEL   the model of the chat check (default qwen3:8b)
  VERIFY_TIMEOUT  seconds the image may take, model loading included
                  (default 300)
  MODELS_LIST     default: models.txt next to this script

Run it on the GPU box, or on the application server through the tunnel
(the same ports).  The image check submits the shipped sdxl-lightning-4step
workflow, held in this script so that it needs no database: the box has
none.  It is the graph of sql/igny8_ai--1.0.sql (test/suites/deploy_gpu_box
checks that the two stay the same), at 1024x1024 with a random seed; the
prompt and its history entry are deleted afterwards (the PNG stays in
ComfyUI's output folder).

Prints one "ok:" or "MISSING:"/"FAILED:" line a check and exits 1 if any
check failed, 0 if all passed, 2 on a usage error.
USAGE
}

# image_check [--print-graph]: submit the workflow, wait for its image,
# fetch it and check it is a PNG; prints its size and time.  With
# --print-graph: print the graph (sorted JSON) and do nothing else.
image_check() {
	"$PY" - "$@" <<'PY'
import json, os, random, sys, time, urllib.parse, urllib.request
url = os.environ.get("COMFYUI_URL", "")
# the shipped workflow sdxl-lightning-4step (sql/igny8_ai--1.0.sql), with
# the values a call binds filled in
graph = {
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
          "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0], "seed": 0, "steps": 4, "cfg": 1.0,
                     "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
    "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
          "inputs": {"ckpt_name": "sdxl_lightning_4step.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"},
          "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
          "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Negative Prompt)"},
          "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
          "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
          "inputs": {"filename_prefix": "igny8", "images": ["8", 0]}},
}
if "--print-graph" in sys.argv:
    print(json.dumps(graph, sort_keys=True))
    sys.exit(0)
graph["6"]["inputs"]["text"] = "a white cloud in a blue sky"
graph["3"]["inputs"]["seed"] = random.randrange(2 ** 48)
graph["9"]["inputs"]["filename_prefix"] = "igny8-verify/check"

def call(path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()

try:
    pid = json.loads(call("/prompt", {"prompt": graph, "client_id": "igny8-verify"}))["prompt_id"]
except urllib.error.HTTPError as e:
    sys.exit("POST /prompt: HTTP %d %s" % (e.code, e.read()[:300].decode(errors="replace")))
start = time.monotonic()
try:
    while True:
        h = json.loads(call("/history/" + pid)).get(pid)
        if h and h.get("status", {}).get("completed"):
            break
        if h and h.get("status", {}).get("status_str") == "error":
            errs = [m[1].get("exception_message", "") for m in h["status"].get("messages", [])
                    if m[0] == "execution_error"]
            sys.exit("execution error: %s" % (errs[0].strip()[:300] if errs else "?"))
        if time.monotonic() - start > float(os.environ["VERIFY_TIMEOUT"]):
            call("/queue", {"delete": [pid]})
            call("/interrupt", {"prompt_id": pid})
            sys.exit("no image after %s s" % os.environ["VERIFY_TIMEOUT"])
        time.sleep(0.5)
    img = h["outputs"]["9"]["images"][0]
    q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img["subfolder"],
                                "type": img["type"]})
    png = call("/view?" + q, timeout=60)
finally:
    call("/history", {"delete": [pid]})
if png[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("the image is not a PNG")
w, hgt = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
print("%dx%d PNG, %d bytes, in %.1f s" % (w, hgt, len(png), time.monotonic() - start))
PY
}

GENERATE=1
PRINT_GRAPH=""
while [ $# -gt 0 ]; do
	case $1 in
		--no-generate) GENERATE=0 ;;
		--print-graph) PRINT_GRAPH=1 ;;
		-h | --help) usage; exit 0 ;;
		*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

if [ -n "${PRINT_GRAPH:-}" ]; then
	PY=${PYTHON:-python3}
	image_check --print-graph
	exit
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OLLAMA_URL=${OLLAMA_URL:-http://127.0.0.1:11434}
COMFYUI_URL=${COMFYUI_URL:-http://127.0.0.1:8188}
VERIFY_TEXT_MODEL=${VERIFY_TEXT_MODEL:-qwen3:8b}
VERIFY_TIMEOUT=${VERIFY_TIMEOUT:-300}
MODELS_LIST=${MODELS_LIST:-$HERE/models.txt}
PY=${PYTHON:-python3}
export OLLAMA_URL COMFYUI_URL VERIFY_TEXT_MODEL VERIFY_TIMEOUT

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "$1: ${*:2}"; failed=$((failed + 1)); }

# --- Ollama: the models ------------------------------------------------------
if tags=$(curl -fsS --max-time 15 "$OLLAMA_URL/api/tags"); then
	have=$(printf '%s' "$tags" | "$PY" -c '
import json, sys
for m in json.load(sys.stdin).get("models", []):
    print(m.get("name", ""))')
	while read -r m; do
		if grep -qxF -- "$m" <<<"$have"; then
			ok "ollama has $m"
		else
			bad MISSING "ollama $m (pull it: ./download-models.sh --only ollama)"
		fi
	done < <(awk '$1 == "ollama" { print $2 }' "$MODELS_LIST")
else
	bad FAILED "Ollama does not answer at $OLLAMA_URL/api/tags"
fi

# --- ComfyUI: the GPU --------------------------------------------------------
if stats=$(curl -fsS --max-time 15 "$COMFYUI_URL/system_stats"); then
	if vram=$(printf '%s' "$stats" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
devs = [x for x in d.get("devices", []) if x.get("type") != "cpu"]
if not devs:
    sys.exit(1)
gib = 1024 ** 3
print("; ".join("%s: %.1f of %.1f GiB VRAM free" % (x.get("name", "?"),
      x.get("vram_free", 0) / gib, x.get("vram_total", 0) / gib) for x in devs))
print("ComfyUI %s, PyTorch %s" % (d.get("system", {}).get("comfyui_version", "?"),
      d.get("system", {}).get("pytorch_version", "?")))'); then
		ok "ComfyUI runs on a GPU: $(head -1 <<<"$vram") ($(tail -1 <<<"$vram"))"
	else
		bad FAILED "ComfyUI's /system_stats lists no GPU (running on the CPU?): check the NVIDIA container toolkit"
	fi
else
	bad FAILED "ComfyUI does not answer at $COMFYUI_URL/system_stats"
fi

# --- ComfyUI: the model files the workflows load ------------------------------
declare -A offered=()
sdxl_ok=0
while read -r kind folder file _repo _path _access wfs; do
	[ "$kind" = comfyui ] || continue
	if [ -z "${offered[$folder]+set}" ]; then
		offered[$folder]=$(curl -fsS --max-time 15 "$COMFYUI_URL/models/$folder" |
			"$PY" -c 'import json, sys; print("\n".join(json.load(sys.stdin)))' 2>/dev/null || true)
	fi
	if grep -qxF -- "$file" <<<"${offered[$folder]}"; then
		ok "ComfyUI offers $folder/$file"
		[ "$file" != sdxl_lightning_4step.safetensors ] || sdxl_ok=1
	else
		bad MISSING "comfyui $folder/$file (workflows $wfs; ./download-models.sh --only comfyui fetches it)"
	fi
done <"$MODELS_LIST"

# --- one generation on each server --------------------------------------------
if [ "$GENERATE" -eq 1 ]; then
	if out=$("$PY" - <<'PY' 2>&1
import json, os, sys, urllib.request
body = {"model": os.environ["VERIFY_TEXT_MODEL"], "stream": False, "think": False,
        "messages": [{"role": "user", "content": "Say hello in three words."}],
        "options": {"num_predict": 8}}
req = urllib.request.Request(os.environ["OLLAMA_URL"] + "/api/chat",
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
d = json.load(urllib.request.urlopen(req, timeout=300))
text = (d.get("message") or {}).get("content", "").strip()
if not text:
    sys.exit("empty answer: %s" % json.dumps(d)[:200])
print("%r in %.1f s" % (text[:60], d.get("total_duration", 0) / 1e9))
PY
	); then
		ok "Ollama $VERIFY_TEXT_MODEL answered: $out"
	else
		bad FAILED "Ollama chat with $VERIFY_TEXT_MODEL: $(tail -1 <<<"$out")"
	fi

	if [ "$sdxl_ok" -eq 0 ]; then
		bad FAILED "no image made: sdxl_lightning_4step.safetensors is missing"
	elif out=$(image_check 2>&1); then
		ok "ComfyUI made an image with sdxl-lightning-4step: $out"
	else
		bad FAILED "ComfyUI image: $(tail -1 <<<"$out")"
	fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
