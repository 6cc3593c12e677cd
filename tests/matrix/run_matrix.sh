#!/usr/bin/env bash
# The optimisation matrix (issue 11): builds tests/matrix/matrix.cpp with g++ and clang++ at
# -O0 -O1 -O2 -O3 -Os -Og, each with and without -fno-omit-frame-pointer (24 combinations, of
# which 20 are distinct code: see below; at most MATRIX_JOBS builds at once, default 2), runs
# every build, and fails if any build or run fails.
#
# Usage: run_matrix.sh <matrix.cpp> <pidring include dir> <work dir>
# A build is reused when it is newer than matrix.cpp, this script, every header under the include
# dir and the compiler: re-running the tests without touching pidring only re-runs the programs.
# Environment: MATRIX_JOBS (parallel builds, default 2), MATRIX_COMPILERS (default "g++ clang++"),
#              MATRIX_LEVELS (default "-O0 -O1 -O2 -O3 -Os -Og").
set -uo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 <matrix.cpp> <pidring include dir> <work dir>" >&2
  exit 2
fi
source_file=$1
include_dir=$2
work=$3
jobs=${MATRIX_JOBS:-2}
read -r -a compilers <<<"${MATRIX_COMPILERS:-g++ clang++}"
read -r -a levels <<<"${MATRIX_LEVELS:--O0 -O1 -O2 -O3 -Os -Og}"

uring_flags=$(pkg-config --cflags --libs liburing) || {
  echo "run_matrix: pkg-config does not know liburing" >&2
  exit 2
}
for cxx in "${compilers[@]}"; do
  command -v "$cxx" >/dev/null || {
    echo "run_matrix: compiler '$cxx' not found (scripts/install-deps installs g++ and clang)" >&2
    exit 2
  }
done

mkdir -p "$work"
rm -f "$work"/*.result
start=$SECONDS

# up_to_date <exe> <compiler>: the build is newer than everything it was made from.
up_to_date() {
  local exe=$1 cxx
  cxx=$(readlink -f "$(command -v "$2")")
  [ -x "$exe" ] || return 1
  [ "$exe" -nt "$source_file" ] && [ "$exe" -nt "${BASH_SOURCE[0]}" ] && [ "$exe" -nt "$cxx" ] || return 1
  [ -z "$(find "$include_dir" -newer "$exe" -print -quit)" ]
}

# build_and_run <name> <compiler> <flags...>: writes <name>.result ("ok ..." or "FAILED ...")
# and <name>.log (compiler and program output).
build_and_run() {
  local name=$1 cxx=$2
  shift 2
  local exe="$work/$name" log="$work/$name.log" t0=$SECONDS built="reused"
  if ! up_to_date "$exe" "$cxx"; then
    rm -f "$exe"
    # shellcheck disable=SC2086  # uring_flags is a list of flags
    if ! "$cxx" -std=c++20 -pipe "$@" -I"$include_dir" "$source_file" -o "$exe" $uring_flags >"$log" 2>&1; then
      rm -f "$exe"
      echo "FAILED to build ($((SECONDS - t0)) s)" >"$work/$name.result"
      return
    fi
    built="built in $((SECONDS - t0)) s"
  else
    : >"$log"
  fi
  local rc=0
  # A hang is a failure too: every step of the program is bounded, so 60 s means stuck.
  timeout -s KILL 60 "$exe" >>"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "ok ($built)" >"$work/$name.result"
  elif [ "$rc" -gt 128 ]; then
    echo "FAILED: killed by signal $((rc - 128))$([ "$rc" -eq 137 ] && echo ' (hung: killed after 60 s)') ($built)" >"$work/$name.result"
  else
    echo "FAILED: exit code $rc ($built)" >"$work/$name.result"
  fi
}

names=()
for cxx in "${compilers[@]}"; do
  for level in "${levels[@]}"; do
    for fp in "" "-fno-omit-frame-pointer"; do
      # Builds that are the same code as another one are skipped (checked with objdump on
      # g++ 12 and clang 14): -O0 keeps the frame pointer anyway, and clang's -Og is its -O1.
      [ "$level" = "-O0" ] && [ -n "$fp" ] && continue
      [ "$level" = "-Og" ] && "$cxx" --version 2>/dev/null | grep -q clang && continue
      # The copier only at -O2 (see matrix.cpp): it has no child-side code or asm.
      copy=""
      [ "$level" = "-O2" ] && [ -z "$fp" ] && copy="-DPIDRING_MATRIX_COPY"
      name="$(basename "$cxx")${level}${fp:+-fp}${copy:++copy}"
      names+=("$name")
      # At most $jobs builds at once (the machine is shared: never more than -j2 by default).
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
      # shellcheck disable=SC2086  # $fp is empty or one flag
      build_and_run "$name" "$cxx" "$level" $fp $copy &
    done
  done
done
wait

failed=0
for name in "${names[@]}"; do
  result=$(cat "$work/$name.result" 2>/dev/null || echo "FAILED: no result")
  printf '  %-28s %s\n' "$name" "$result"
  case $result in
    ok*) ;;
    *)
      failed=$((failed + 1))
      sed 's/^/      | /' "$work/$name.log" | head -40
      ;;
  esac
done
echo "run_matrix: ${#names[@]} builds, $failed failed, $((SECONDS - start)) s"
[ "$failed" -eq 0 ]
