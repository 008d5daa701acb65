#!/usr/bin/env bash
# Install eyescreen on a machine without internet, as the README says, and check it for real.
#
#   bash scripts/offline_install_check.sh [WORKDIR]      # default /tmp/eyescreen-offline
#
# 1. With internet: `pip wheel` puts the project and every dependency, as wheels, in WORKDIR/wheelhouse.
# 2. Without: a fresh virtual environment installs from the wheelhouse alone (--no-index) and runs the
#    demo inside a network namespace with no network at all (`unshare -n`, root or user namespaces
#    needed), so that anything reaching for the internet fails here, not at a hospital.
# Prints the wheelhouse's size and the time of each step.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/eyescreen-offline}"
rm -rf "$work" && mkdir -p "$work"
cd "$work"

start=$SECONDS
python3 -m pip wheel --quiet --wheel-dir wheelhouse "$repo"
echo "wheelhouse: $(ls wheelhouse | wc -l) wheels, $(du -sh wheelhouse | cut -f1), $((SECONDS - start)) s to build"
ls wheelhouse | grep -E '^(torch|torchvision|eyescreen)-' | sed 's/^/  /'

start=$SECONDS
unshare -n bash -c '
  set -euo pipefail
  python3 -m venv venv
  venv/bin/pip install --quiet --no-index --find-links wheelhouse eyescreen
'
echo "offline install: $((SECONDS - start)) s"

start=$SECONDS
unshare -n venv/bin/eyescreen demo --out "$work/demo" > demo.log 2>&1 || { tail -20 demo.log; exit 1; }
echo "offline demo: $((SECONDS - start)) s; $(grep -c . demo.log) lines of output, report in $work/demo/report"
test -f "$work/demo/report/report.html" && test -f "$work/demo/best.safetensors"
echo "ok: installed and ran with no network (commit $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores)"
