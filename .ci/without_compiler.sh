#!/usr/bin/env bash
# Run a command with no C or C++ compiler on PATH (every other program on PATH stays), to show
# that gluon_resnest works where its native operator library cannot be built.
set -euo pipefail
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
IFS=: read -ra dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  for tool in "$dir"/*; do
    name=$(basename "$tool")
    case "$name" in
      *g++*|*gcc*|*c++*|cc|*-cc|cc-*|clang*|cpp|cpp-*|*-cpp|*-cpp-*|icpx|icpc|icx|icc) continue ;;
    esac
    [ -e "$bin/$name" ] || ln -s "$tool" "$bin/$name"
  done
done
if PATH="$bin" command -v g++ >/dev/null || PATH="$bin" command -v c++ >/dev/null; then
  echo "without_compiler.sh: a C++ compiler is still on PATH" >&2
  exit 1
fi
env -u CXX -u CC PATH="$bin" "$@"
