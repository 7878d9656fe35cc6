#!/usr/bin/env bash
# Runs tests/compat/reference_client.py in a Python venv kept outside the repository.
#
# The venv lives in $HALO_COMPAT_VENV (default: ${XDG_CACHE_HOME:-$HOME/.cache}/halo-compat/venv)
# and is rebuilt whenever requirements.txt changes. Python: $PYTHON (default python3, >= 3.10).
# Every argument is passed on to reference_client.py, e.g.
#
#   tests/compat/run.sh --reference-protos /tmp/ref/src/main/proto --spawn target/debug/halo
#   tests/compat/run.sh --reference-protos /tmp/ref/src/main/proto --kingdom 127.0.0.1:8443 --pki PKI_DIR
#   tests/compat/run.sh --reference-git /path/to/cross-media-measurement.git --generate-only
#
# (reference_client.py --help lists all options.)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
venv="${HALO_COMPAT_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/halo-compat/venv}"
stamp="$venv/.halo-compat-requirements.sha256"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "run.sh: $python is missing or older than Python 3.10 (set PYTHON=...)" >&2
  exit 2
fi

want="$(cat "$here/requirements.txt" <("$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
  # Only ever delete a directory that is a venv (or does not exist yet).
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" ]]; then
    echo "run.sh: $venv exists and is not a venv; refusing to replace it" >&2
    exit 2
  fi
  echo "run.sh: creating venv $venv" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

exec "$venv/bin/python" "$here/reference_client.py" "$@"
