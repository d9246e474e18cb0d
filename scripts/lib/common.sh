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

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# Kernel make variables shared by the kernel and the module build.
kmake_vars() {
    printf '%s\n' LLVM=1 "RUSTC=$KRUSTC" "HOSTRUSTC=$KRUSTC" "BINDGEN=$KBINDGEN"
}

# A command that fails under `set -e` ends the script: say which one, where.
trap 'printf "%s: error: line %s: command failed (status %s): %s\n" "${0##*/}" "$LINENO" "$?" "$BASH_COMMAND" >&2' ERR
