#!/usr/bin/env bash
# Get the official GraNet code (VITA-Group/GraNet; not part of this repository) for reference_gmp.py.
#   experiments/reference_gmp/setup.sh DIR           clone it into DIR (needs network), check out the pinned
#                                                    commit, verify core.py, print the GRANET_CORE line
#   experiments/reference_gmp/setup.sh --check FILE  verify a core.py obtained another way (e.g. the GitHub zip
#                                                    of the commit below: CIFAR/sparselearning/core.py)
set -euo pipefail
COMMIT=f338a2479758ba35660c3d64422ee9c83abb02a5
SHA256=17e69473a45b98e5fec5b01c8822375689d89d8d395e817bb35a3180c4df4d72  # CIFAR/sparselearning/core.py at COMMIT

check() {
  if echo "$SHA256  $1" | sha256sum -c --quiet - >/dev/null 2>&1; then
    echo "ok: $1 is CIFAR/sparselearning/core.py at $COMMIT"
  else
    echo "warning: $1 is not the pinned core.py (reference_gmp.py still runs it and records its hash)" >&2
  fi
}

if [ "${1:-}" = "--check" ]; then check "${2:?usage: setup.sh --check FILE}"; exit 0; fi
dir=${1:?usage: setup.sh DIR (where to clone VITA-Group/GraNet) or setup.sh --check FILE}
[ -d "$dir/.git" ] || git clone https://github.com/VITA-Group/GraNet "$dir"
git -C "$dir" checkout -q "$COMMIT"
check "$dir/CIFAR/sparselearning/core.py"
echo "export GRANET_CORE=$(cd "$dir" && pwd)/CIFAR/sparselearning/core.py"
