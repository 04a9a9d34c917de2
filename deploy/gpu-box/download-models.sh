#!/bin/bash
#
# deploy/gpu-box/download-models.sh: put on the GPU box every model the
# shipped igny8_ai configuration uses (deploy/gpu-box/models.txt): the
# Qwen3 models into Ollama, the FLUX.1 [dev], SD 3.5 Large and
# SDXL-Lightning files into ComfyUI's models/ folders.
#
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: download-models.sh [--dry-run] [--only ollama|comfyui] [--help]

  --dry-run   download nothing: ask Ollama (GET /api/tags) and ComfyUI
              (GET /models/FOLDER) what they already have, and print what
              would be pulled or downloaded, and from where
  --only X    only the Ollama models, or only the ComfyUI files

Environment:
  OLLAMA_URL      Ollama's address (default http://127.0.0.1:11434)
  COMFYUI_URL     ComfyUI's address (default http://127.0.0.1:8188)
  COMFYUI_MODELS  the host folder mounted as ComfyUI's models/
                  (default /opt/ai/comfyui/models, as docker-compose.yml);
                  the user running this must be able to write it: checked
                  first, also with --dry-run, before anything is fetched
  HF_TOKEN        a Hugging Face token (read access) for the gated
                  repositories; accept each licence on its model page first
  HF_ENDPOINT     default https://huggingface.co
  MODELS_LIST     default: models.txt next to this script

Ollama models are pulled through Ollama's API (POST /api/pull), which
resumes an interrupted pull by itself.  ComfyUI files are fetched with
curl into FILE.part, resumed (-C -) when run again, and renamed when
complete.  A file that is already there is not fetched again.

Checksums: Hugging Face shows a SHA-256 only as the Git LFS pointer of a
file, and none was written into this project (none was seen).  So the
first download's SHA-256 is recorded in FILE.sha256 next to the file, and
every later run checks the file against it (trust on first use); the
script says when it records one.  To cross-check by hand, the Hub's
answer to `curl -sI -H "Authorization: Bearer $HF_TOKEN" URL` carries the
file's LFS oid in its X-Linked-Etag header.

Exit status: 0 when everything is present (or, with --dry-run, when both
servers answered), 1 otherwise, 2 on a usage error.
USAGE
}

DRY_RUN=0
ONLY=""
while [ $# -gt 0 ]; do
	case $1 in
		--dry-run) DRY_RUN=1 ;;
		--only)
			[ $# -ge 2 ] || { usage >&2; exit 2; }
			ONLY=$2
			shift
			;;
		-h | --help) usage; exit 0 ;;
		*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
case $ONLY in "" | ollama | comfyui) ;; *) usage >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
OLLAMA_URL=${OLLAMA_URL:-http://127.0.0.1:11434}
COMFYUI_URL=${COMFYUI_URL:-http://127.0.0.1:8188}
COMFYUI_MODELS=${COMFYUI_MODELS:-/opt/ai/comfyui/models}
HF_ENDPOINT=${HF_ENDPOINT:-https://huggingface.co}
MODELS_LIST=${MODELS_LIST:-$HERE/models.txt}
PY=${PYTHON:-python3}

errors=0
fail() { echo "ERROR: $*" >&2; errors=$((errors + 1)); }

# json_list KEY: the names in a JSON answer on stdin: with KEY "models",
# Ollama's /api/tags ({"models": [{"name": ...}]}); with KEY "", a plain
# list of strings (ComfyUI's /models/FOLDER).  One a line.
json_list() {
	"$PY" -c '
import json, sys
d = json.load(sys.stdin)
items = d.get(sys.argv[1], []) if sys.argv[1] else d
for m in items:
    print(m["name"] if isinstance(m, dict) else m)
' "$1"
}

# --- Ollama ------------------------------------------------------------------
ollama_models() { awk '$1 == "ollama" { print $2 }' "$MODELS_LIST"; }

do_ollama() {
	local tags present m answer
	echo "== Ollama at $OLLAMA_URL"
	if ! tags=$(curl -fsS --max-time 15 "$OLLAMA_URL/api/tags"); then
		fail "Ollama does not answer at $OLLAMA_URL/api/tags"
		return 0
	fi
	present=$(printf '%s' "$tags" | json_list models)
	for m in $(ollama_models); do
		# an untagged name means :latest; every model here is tagged
		if grep -qxF -- "$m" <<<"$present"; then
			echo "present: ollama $m"
		elif [ "$DRY_RUN" -eq 1 ]; then
			echo "would pull: ollama $m (POST $OLLAMA_URL/api/pull)"
		else
			echo "pulling: ollama $m (this takes a while: tens of GB)"
			if answer=$(curl -fsS -X POST "$OLLAMA_URL/api/pull" \
				-H 'Content-Type: application/json' \
				-d "{\"model\": \"$m\", \"stream\": false}") &&
				grep -q '"status": *"success"' <<<"$answer"; then
				echo "pulled: ollama $m"
			else
				fail "pull of $m failed: ${answer:-no answer}"
			fi
		fi
	done
}

# --- ComfyUI -----------------------------------------------------------------
# record_or_check FILE: check FILE against FILE.sha256, or record it there.
record_or_check() {
	local f=$1 sum
	if [ -s "$f.sha256" ]; then
		if (cd "$(dirname "$f")" && sha256sum --quiet -c "$(basename "$f").sha256"); then
			echo "verified: $f (SHA-256 as recorded in $f.sha256)"
			return 0
		fi
		fail "$f does not match $f.sha256: delete the file (and the .sha256 if the publisher changed it) and run again"
		return 1
	fi
	sum=$(sha256sum "$f" | cut -d' ' -f1)
	(cd "$(dirname "$f")" && printf '%s  %s\n' "$sum" "$(basename "$f")" >"$(basename "$f").sha256")
	echo "recorded: $f.sha256 = $sum (first download: later runs check against it; no published checksum was available)"
}

# fetch URL PART: curl URL into PART, resuming; the token, if any, goes in
# a curl config on stdin, never on the command line.
fetch() {
	local url=$1 part=$2
	{
		if [ -n "${HF_TOKEN:-}" ]; then
			printf 'header = "Authorization: Bearer %s"\n' "$HF_TOKEN"
		fi
	} | curl -fL --retry 5 --retry-delay 10 -C - -K - -o "$part" "$url"
}

do_comfyui() {
	local kind folder file repo path access wfs listed target url answer note
	local -A offered=()
	echo "== ComfyUI at $COMFYUI_URL (files in $COMFYUI_MODELS)"
	while read -r kind folder file repo path access wfs; do
		[ "$kind" = comfyui ] || continue
		if [ -z "${offered[$folder]+set}" ]; then
			if answer=$(curl -fsS --max-time 15 "$COMFYUI_URL/models/$folder"); then
				offered[$folder]=$(printf '%s' "$answer" | json_list "")
			else
				offered[$folder]=""
				if [ "$DRY_RUN" -eq 1 ]; then
					fail "ComfyUI does not answer at $COMFYUI_URL/models/$folder"
				fi
			fi
		fi
		listed=${offered[$folder]}
		target=$COMFYUI_MODELS/$folder/$file
		url=$HF_ENDPOINT/$repo/resolve/main/$path
		if [ "$DRY_RUN" -eq 1 ]; then
			if grep -qxF -- "$file" <<<"$listed"; then
				echo "present: comfyui $folder/$file (ComfyUI lists it; workflows $wfs)"
			elif [ -f "$target" ]; then
				echo "present on disk, not listed by ComfyUI: $target (restart ComfyUI?)"
			else
				note=$access
				if [ "$access" = gated ]; then
					if [ -n "${HF_TOKEN:-}" ]; then note="gated, HF_TOKEN set"; else note="gated, HF_TOKEN NOT set"; fi
				fi
				echo "would download: $url -> $target ($note; workflows $wfs)"
			fi
			continue
		fi
		mkdir -p "$COMFYUI_MODELS/$folder"
		if [ -f "$target" ]; then
			record_or_check "$target" || true
			continue
		fi
		if [ "$access" = gated ] && [ -z "${HF_TOKEN:-}" ]; then
			fail "$repo is gated: set HF_TOKEN (and accept the licence at $HF_ENDPOINT/$repo) to fetch $path"
			continue
		fi
		echo "downloading: $url -> $target"
		if ! fetch "$url" "$target.part"; then
			fail "download of $url failed (run again to resume)"
			continue
		fi
		mv "$target.part" "$target"
		record_or_check "$target" || true
	done <"$MODELS_LIST"
}

# check_models_dir: the folders the ComfyUI files go to can be written, or
# made, by the user running this, checked before anything is fetched (also
# with --dry-run, which makes nothing).  /opt/ai made with sudo mkdir is
# root's: without this check the first ComfyUI file would stop the script
# half-way, perhaps after hours of Ollama pulls.
check_models_dir() {
	local folder dir existing who owner
	who=$(id -un)
	while read -r folder; do
		dir=$COMFYUI_MODELS/$folder
		# the folder itself, or the nearest parent that exists (mkdir -p
		# makes the rest, owned by this user)
		existing=$dir
		while [ ! -e "$existing" ] && [ "$existing" != / ]; do
			existing=$(dirname "$existing")
		done
		if [ -d "$existing" ] && [ -w "$existing" ] && [ -x "$existing" ]; then
			continue
		fi
		owner=$(stat -c '%U:%G, mode %a' "$existing" 2>/dev/null) || owner="not a folder"
		fail "$dir cannot be written by $who ($existing is $owner): run as the owner of $COMFYUI_MODELS, or give it to $who: sudo chown -R $who $COMFYUI_MODELS"
		return 1
	done < <(awk '$1 == "comfyui" { print $2 }' "$MODELS_LIST" | sort -u)
}

if [ "$ONLY" != ollama ] && ! check_models_dir; then
	echo "$errors problem(s); see the ERROR lines: nothing was fetched" >&2
	exit 1
fi
[ "$ONLY" = comfyui ] || do_ollama
[ "$ONLY" = ollama ] || do_comfyui

if [ "$errors" -gt 0 ]; then
	echo "$errors problem(s); see the ERROR lines" >&2
	exit 1
fi
if [ "$DRY_RUN" -eq 1 ]; then
	echo "dry run: nothing was downloaded"
else
	echo "done: run ./verify.sh"
fi
