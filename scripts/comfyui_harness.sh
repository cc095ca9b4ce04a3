#!/usr/bin/env bash
# Build a headless ComfyUI for this pack's end-to-end tests (tests/test_comfyui_e2e.py).
#
#   scripts/comfyui_harness.sh SOURCE [TARGET_DIR]
#
# SOURCE is a ComfyUI git checkout (a folder with .git), a bare git directory
# (e.g. a snapshot of github.com/Comfy-Org/ComfyUI), or a plain folder that
# already holds ComfyUI's main.py. TARGET_DIR (default /tmp/comfyui) receives a
# checkout of SOURCE's HEAD (unless SOURCE is that folder already) and a venv in
# TARGET_DIR/venv with ComfyUI's requirements. Nothing is installed into this
# repo, and this repo is not copied into ComfyUI: the tests point ComfyUI at it
# through an extra_model_paths.yaml. Safe to rerun: finished steps are skipped.
#
# Environment:
#   PYTHON        the Python that makes the venv (default python3; ComfyUI wants 3.10+)
#   TORCH_SPEC    the torch pip requirements, installed before ComfyUI's own
#                 (default "torch torchvision torchaudio", the three ComfyUI's requirements
#                 list: without torchaudio its audio nodes log IMPORT FAILED at start)
#   TORCH_INDEX   where torch comes from: "cpu" for PyTorch's CPU wheel index
#                 (https://download.pytorch.org/whl/cpu: a few hundred MB instead of a
#                 multi-GB CUDA build; plenty for the tests), or any index URL
#                 (e.g. https://download.pytorch.org/whl/cu124); default: pip's index
#   PIP_ARGS      extra arguments for pip (an index URL, --no-index --find-links ...)
#
#   TORCH_INDEX=cpu scripts/comfyui_harness.sh /tmp/ComfyUI-src /tmp/comfyui
#
# Then run the end-to-end tests with the folder it prints last:
#   COMFYUI_DIR=/tmp/comfyui .venv/bin/python -m pytest tests/test_comfyui_e2e.py
set -euo pipefail

usage() { echo "usage: $0 SOURCE [TARGET_DIR]   (SOURCE: a ComfyUI checkout, or a bare git dir of one)" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
source_dir=$1
target=${2:-/tmp/comfyui}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch torchvision torchaudio}
read -r -a pip_args <<< "${PIP_ARGS:-}"
case "${TORCH_INDEX:-}" in
  "") torch_index=() ;;
  cpu) torch_index=(--index-url https://download.pytorch.org/whl/cpu) ;;
  http://*|https://*|file://*) torch_index=(--index-url "$TORCH_INDEX") ;;
  *) echo "$0: TORCH_INDEX=$TORCH_INDEX: give cpu or an index URL (https://...)" >&2; exit 2 ;;
esac

[ -e "$source_dir" ] || { echo "$0: $source_dir does not exist" >&2; exit 2; }
source_dir=$(cd "$source_dir" && pwd)

# 1. the ComfyUI files
if [ -f "$target/main.py" ]; then
  echo "ComfyUI files already in $target" >&2
elif [ -f "$source_dir/main.py" ] && [ ! -d "$source_dir/objects" ]; then
  if [ "$source_dir" != "$(mkdir -p "$target" && cd "$target" && pwd)" ]; then
    echo "copying $source_dir to $target" >&2
    cp -a "$source_dir/." "$target/"
  fi
else
  if [ -d "$source_dir/.git" ]; then git_dir="$source_dir/.git"; else git_dir="$source_dir"; fi
  git --git-dir="$git_dir" rev-parse --verify -q HEAD >/dev/null \
    || { echo "$0: $source_dir is neither a ComfyUI folder nor a git repository with a HEAD" >&2; exit 2; }
  mkdir -p "$target"
  echo "checking out $(git --git-dir="$git_dir" rev-parse --short HEAD) of $git_dir into $target" >&2
  # Snapshots may lack their largest blobs (a tokenizer the tests never use): check out what is there.
  git --git-dir="$git_dir" --work-tree="$target" checkout -f HEAD -- . 2>/dev/null \
    || echo "note: some files could not be checked out (missing blobs); going on" >&2
fi
for f in main.py requirements.txt; do
  [ -f "$target/$f" ] || { echo "$0: $target/$f is missing: not a ComfyUI tree" >&2; exit 2; }
done

# 2. its Python environment
if [ -x "$target/venv/bin/python" ] && "$target/venv/bin/python" -c "import torch, torchvision, torchaudio, aiohttp, requests" 2>/dev/null; then
  echo "venv already complete in $target/venv" >&2
else
  "$python" -m venv "$target/venv"
  # torch first, as asked: ComfyUI's requirements list it unpinned, which could pull a CUDA build
  # shellcheck disable=SC2086
  "$target/venv/bin/pip" install -q "${pip_args[@]}" "${torch_index[@]}" $torch_spec
  grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)([^a-zA-Z0-9_.-].*)?$' "$target/requirements.txt" \
    > "$target/requirements-without-torch.txt"
  # requests: ComfyUI's frontend package manager imports it without listing it
  "$target/venv/bin/pip" install -q "${pip_args[@]}" -r "$target/requirements-without-torch.txt" requests
fi

# 3. a smoke check: ComfyUI's own modules import
(cd "$target" && "$target/venv/bin/python" -c "import comfy.options, folder_paths" ) \
  || { echo "$0: ComfyUI in $target does not import; see the errors above" >&2; exit 1; }
"$target/venv/bin/python" -c "import torchaudio" 2>/dev/null \
  || echo "note: torchaudio does not import in $target/venv: ComfyUI's audio nodes will log IMPORT FAILED" >&2
echo "$target"
