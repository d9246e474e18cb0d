# shellcheck shell=bash
# Shared helpers for vmdedup scripts. Source it; do not run it.

# shellcheck disable=SC2034 # for the scripts that source this file
VMDEDUP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC2034 # for the scripts that source this file
VMDEDUP_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vmdedup"

# The toolchain the guest kernel and module are built with. Rust-for-Linux needs
# a rustc whose library source matches it: Debian's rustc-web + rust-web-src.
KRUSTC="${KRUSTC:-/usr/bin/rustc}"
KBINDGEN="${KBINDGEN:-$(command -v bindgen 2>/dev/null || echo "$HOME/.cargo/bin/bindgen")}"

# The name messages start with: the script's file name unless the script set
# script_name before sourcing this file.
script_name=${script_name:-${0##*/}}
log() { printf '%s: %s\n' "$script_name" "$*" >&2; }
die() { printf '%s: error: %s\n' "$script_name" "$*" >&2; exit 1; }
# A wrong command line: say so, point at --help, exit 2.
usage_error() { printf '%s: %s (see --help)\n' "$script_name" "$*" >&2; exit 2; }

# Kernel make variables shared by the kernel and the module build.
kmake_vars() {
    printf '%s\n' LLVM=1 "RUSTC=$KRUSTC" "HOSTRUSTC=$KRUSTC" "BINDGEN=$KBINDGEN"
}

# A command that fails under `set -e` ends the script: say which one, where.
trap 'printf "%s: error: line %s: command failed (status %s): %s\n" "$script_name" "$LINENO" "$?" "$BASH_COMMAND" >&2' ERR
