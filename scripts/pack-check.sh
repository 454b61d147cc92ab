#!/usr/bin/env bash
# The published package as a user gets it (issue 18). `npm pack` (prepack: scripts/prebuild.mjs
# builds prebuilds/linux-x64 for package.json's "longcat".cudaArchs), then:
#  1. the prebuild in the tarball: needs only libc/libm/libgcc_s/ld-linux, no GLIBCXX_/CXXABI_
#     symbol versions (libstdc++ is inside), no GLIBC_ version above package.json's "longcat".glibc,
#     no GCC_ version above 4.2.0; every target of cudaArchs (SASS and PTX) in the fatbin of
#     every kernel file (scripts/fatbin-list.mjs; cuobjdump agrees where installed);
#  2. the tarball installed into empty projects with PATH holding only node, npm, npx and sh (no
#     compiler, cmake, make, python or nvcc): with --ignore-scripts (as npm 12 does by default) and
#     with the install script allowed (which must take the prebuild); neither installs the build
#     tools (cmake-js, node-addon-api); the commands of USER_COMMANDS run in each installed
#     project; a forced source build there fails saying what to install and run.
#   scripts/pack-check.sh [TARBALL]   (a tarball given: no npm pack, check that one)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "pack-check: FAIL: $*" >&2; exit 1; }
meta() { node -p "require('./package.json').longcat.$1"; }

# What a user runs after installing (in the installed project; the CLI is `npx longcat`).
USER_COMMANDS=(
  "npx longcat info"
  "npx longcat generate --prompt Hello --max-tokens 8 --seed 1"
  "npx longcat doctor"
  "npx longcat bench -o json -p 32 -n 8 -r 2"
)

if [ $# -gt 0 ]; then
  tarball=$(realpath "$1")
else
  echo "== npm pack (prepack builds the prebuild)"
  t0=$SECONDS
  npm pack --pack-destination "$work" >"$work/pack.log" 2>&1 || { tail -40 "$work/pack.log"; fail "npm pack"; }
  grep '^prebuild:' "$work/pack.log" || true
  tarball=$(ls "$work"/longcat-flash-*.tgz)
  echo "npm pack: $((SECONDS - t0)) s"
fi
echo "tarball: $(basename "$tarball"), $(du -k "$tarball" | cut -f1) KiB, $(tar -tzf "$tarball" | wc -l) files"

echo "== 1. the prebuild's dependencies and CUDA targets"
mkdir "$work/x"
tar -xzf "$tarball" -C "$work/x"
addon="$work/x/package/prebuilds/linux-x64/longcat-flash.napi.glibc.node"
[ -f "$addon" ] || fail "no prebuilds/linux-x64/longcat-flash.napi.glibc.node in the tarball: $(tar -tzf "$tarball" | grep prebuilds || true)"
echo "$(basename "$addon"): $(du -k "$addon" | cut -f1) KiB"
needed=$(readelf -d "$addon" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
echo "NEEDED: $needed"
for lib in $needed; do
  case $lib in
  libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-x86-64.so.2 | libdl.so.2 | libpthread.so.0 | librt.so.1) ;;
  *) fail "the prebuild needs $lib" ;;
  esac
done
versions=$(objdump -T "$addon" | grep -o '(\(GLIBC\|GLIBCXX\|CXXABI\|GCC\)_[0-9.]*)' | tr -d '()' | sort -u -V)
echo "symbol versions: $(echo "$versions" | tr '\n' ' ')"
! echo "$versions" | grep -q '^\(GLIBCXX\|CXXABI\)_' || fail "the prebuild needs libstdc++ symbol versions: $(echo "$versions" | grep '^\(GLIBCXX\|CXXABI\)_' | tr '\n' ' ')"
floor=$(meta glibc | tr -d '>= ')
newest() { printf '%s\n' "$@" | sort -V | tail -1; }
glibc=$(echo "$versions" | sed -n 's/^GLIBC_//p' | sort -V | tail -1)
[ "$(newest "$glibc" "$floor")" = "$floor" ] || fail "the prebuild needs GLIBC_$glibc, newer than the declared floor $floor"
gcc=$(echo "$versions" | sed -n 's/^GCC_//p' | sort -V | tail -1)
[ -z "$gcc" ] || [ "$(newest "$gcc" 4.2.0)" = 4.2.0 ] || fail "the prebuild needs GCC_$gcc from libgcc_s (more than 4.2.0)"
echo "glibc: needs GLIBC_$glibc, declared >= $floor; libgcc_s: GCC_${gcc:-none}"

archs=$(meta cudaArchs)
built=$(node -p "require('$addon').buildInfo().cudaArchs")
[ "$built" = "${archs//;/,}" ] || fail "buildInfo().cudaArchs is '$built', package.json says '$archs'"
# Every kernel file's fatbin must hold every target (scripts/fatbin-list.mjs: cuobjdump --list-elf /
# --list-ptx, which a machine with only nvcc lacks; cross-checked with cuobjdump where it exists).
targets=" $(node scripts/fatbin-list.mjs "$addon" --targets) "
echo "CUDA targets in every kernel file's fatbin ($(node scripts/fatbin-list.mjs "$addon" | wc -l) fatbins):$targets"
for a in ${archs//;/ }; do
  case $a in
  compute_*) want=$a ;;
  *) want=sm_$a ;;
  esac
  [[ $targets == *" $want "* ]] || fail "$want is missing from the prebuild's fatbins"
done
if cuobjdump=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null); then
  elf=$("$cuobjdump" --list-elf "$addon" | grep -o 'sm_[0-9]*a\?' | sort -u | tr '\n' ' ')
  ptx=$("$cuobjdump" --list-ptx "$addon" | grep -o 'sm_[0-9]*a\?' | sort -u | sed 's/^sm_/compute_/' | tr '\n' ' ')
  echo "cuobjdump: SASS $elf; PTX $ptx"
  for t in $elf $ptx; do [[ $targets == *" $t "* ]] || fail "cuobjdump lists $t, fatbin-list.mjs does not"; done
fi

echo "== 2. installs without compilers"
mkdir "$work/bin"
for t in node npm npx sh; do ln -s "$(command -v $t)" "$work/bin/$t"; done
bare() { env PATH="$work/bin" "$@"; } # a command with only node, npm, npx and sh on PATH
for t in cc gcc g++ c++ clang cmake make python3 python nvcc; do
  ! bare /bin/sh -c "command -v $t" >/dev/null || fail "$t is on the stripped PATH"
done
install_into() { # DIR, npm install options...
  local dir=$1
  shift
  mkdir "$dir"
  (cd "$dir" && bare npm init -y >/dev/null && bare npm install --no-audit --no-fund --prefer-offline "$@" "$tarball" >"$dir.log" 2>&1) ||
    { tail -20 "$dir.log"; fail "npm install $* in $dir"; }
  grep '^longcat-flash:' "$dir.log" || true
  for tool in cmake-js node-addon-api node-gyp; do
    [ ! -e "$dir/node_modules/$tool" ] || fail "npm install $* installed the build tool $tool"
  done
  echo "installed ($*): $(ls "$dir/node_modules" | wc -l) top-level packages, $(du -sk "$dir/node_modules" | cut -f1) KiB"
}
run_user_commands() { # DIR
  for c in "${USER_COMMANDS[@]}"; do
    echo "\$ $c"
    # shellcheck disable=SC2086 # the command's words
    (cd "$1" && bare $c) || fail "'$c' in the installed project"
  done
}
t0=$SECONDS
echo "-- npm install --ignore-scripts"
install_into "$work/p1" --ignore-scripts
run_user_commands "$work/p1"
echo "-- npm install with the install script (npm 11.x runs a dependency's only when allowed)"
install_into "$work/p2" --foreground-scripts --dangerously-allow-all-scripts
grep -q '^longcat-flash: using the prebuilt addon' "$work/p2.log" || fail "the install script did not take the prebuild"
run_user_commands "$work/p2"
echo "-- npm rebuild longcat-flash --build-from-source without build tools: fails, saying what to run"
if out=$(cd "$work/p2" && bare npm rebuild longcat-flash --build-from-source --foreground-scripts 2>&1); then
  fail "a source build without build tools succeeded?"
fi
echo "$out" | grep -q 'npm install --save-dev cmake-js node-addon-api' || fail "the failed source build does not say what to install: $out"
echo "$out" | grep -q 'npm rebuild longcat-flash --build-from-source' || fail "the failed source build does not say what to run: $out"
echo "installs and commands: $((SECONDS - t0)) s"
echo "pack-check: OK"
