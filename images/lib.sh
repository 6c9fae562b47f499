# shellcheck shell=bash
# Shared helpers for Ember's image and soft-host scripts. Source, don't run.
# Expects $repo (the checkout root) to be set by the caller.
: "${repo:?lib.sh needs \$repo set to the checkout root}"

umask 022

# print_help: prints the calling script's header comment (its usage).
print_help() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

log() { printf '%s: %s\n' "${EMBER_LOG_PREFIX:-$(basename "$0")}" "$*" >&2; }
warn() { log "warning: $*"; }
die() { log "error: $*"; exit 1; }

# need_cmds CMD...: fail with the package hint when a tool is missing.
need_cmds() {
    local c missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing tools: ${missing[*]} (apt-get install -y --no-install-recommends $(host_packages | tr '\n' ' '))"
}

# host_packages: the Debian packages an Ember host needs (images/host-packages).
host_packages() {
    grep -v '^[[:space:]]*\(#\|$\)' "$repo/images/host-packages"
}

# ensure_host_packages: installs the packages of images/host-packages that
# are missing (as root, saying which and why), or stops with the exact
# apt-get line when it cannot.
ensure_host_packages() {
    local p missing=()
    command -v dpkg-query >/dev/null 2>&1 || die "not a Debian system (no dpkg-query): install the equivalents of images/host-packages"
    for p in $(host_packages); do
        [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local line="apt-get install -y --no-install-recommends ${missing[*]}"
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
        die "missing Debian packages the guest images and the soft KVM host need; as root run: $line"
    log "installing missing Debian packages (guest kernel build, guest images, soft KVM host; see images/host-packages): ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || {
        log "apt-get install failed; refreshing the package lists (apt-get update) and trying again"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    } || die "could not install the missing packages; as root run: apt-get update && $line"
}

# ember_cache_dir: where build outputs live, outside any checkout.
ember_cache_dir() {
    printf '%s\n' "${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}"
}

# cache_hit PATH: true if PATH exists; marks it used (for prune_cache).
cache_hit() {
    [ -e "$1" ] && touch -c "$1"
}

# prune_cache DIR: removes cache entries unused for 30 days (entries in use
# are touched by cache_hit; half-built ".work"/".tmp" leftovers go too).
prune_cache() {
    find "$1" -mindepth 1 -maxdepth 1 \( -name 'kernel-*' -o -name 'initramfs-*' \
        -o -name 'softhost-*' -o -name 'runtime-*' \) -mtime +30 -exec rm -rf {} + 2>/dev/null || true
}

# build_static_bin PACKAGE BIN: builds a statically linked release binary of
# a workspace package and prints its path.
build_static_bin() {
    local pkg=$1 bin=$2 triple=x86_64-unknown-linux-gnu
    # The explicit --target keeps proc-macros (host code) dynamically linked.
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release -p "$pkg" --bin "$bin" --target "$triple") >&2 ||
        die "cargo build of $pkg ($bin) failed"
    local out="$repo/target/$triple/release/$bin"
    file "$out" | grep -qE 'statically linked|static-pie linked' || die "$out is not statically linked"
    printf '%s\n' "$out"
}

# export_image_paths: builds the guest images (cached) and exports their
# paths as EMBER_VMLINUX, EMBER_BZIMAGE and EMBER_INITRAMFS, and the
# managed runtimes' images as EMBER_RUNTIME_PYTHON313, EMBER_RUNTIME_NODEJS20.
export_image_paths() {
    local paths key value
    paths=$("$repo/images/build" --print-paths) || die "images/build failed"
    while IFS='=' read -r key value; do
        case "$key" in
            vmlinux) export EMBER_VMLINUX=$value ;;
            bzimage) export EMBER_BZIMAGE=$value ;;
            initramfs) export EMBER_INITRAMFS=$value ;;
            runtime_python3.13) export EMBER_RUNTIME_PYTHON313=$value ;;
            runtime_nodejs20.x) export EMBER_RUNTIME_NODEJS20=$value ;;
        esac
    done <<<"$paths"
}

# Debian's static busybox, which every Ember initramfs carries.
busybox_bin=/bin/busybox

# need_static_busybox: fail unless $busybox_bin is a static binary.
need_static_busybox() {
    file -L "$busybox_bin" 2>/dev/null | grep -q 'statically linked' ||
        die "$busybox_bin is not Debian's static busybox: apt-get install busybox-static"
}

# install_busybox ROOT: static busybox at ROOT/bin/busybox, every applet a
# symlink beside it.
install_busybox() {
    local root=$1 applet
    mkdir -p "$root/bin"
    install -m 0755 "$busybox_bin" "$root/bin/busybox"
    for applet in $("$busybox_bin" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
}

# reproducible_cpio DIR: writes a newc cpio of DIR to stdout with sorted
# entries, root ownership and fixed timestamps, so equal trees give equal bytes.
reproducible_cpio() {
    (
        cd "$1" || exit 1
        find . -mindepth 1 -exec touch -h -d @0 {} +
        find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
            cpio -o -H newc --reproducible -R 0:0 --quiet
    )
}

# ensure_aws_cli: puts an AWS CLI on PATH for the tests that drive Ember
# as users do (installs v1 from PyPI into a venv when there is none).
ensure_aws_cli() {
    local venv=${EMBER_AWSCLI_VENV:-/opt/ember-awscli}
    "$venv/bin/python" -c 'import boto3' 2>/dev/null || { log "installing boto3 (PyPI) into $venv: the runtime tests drive Ember with it"; python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q boto3 >&2; } || die "could not install boto3 into $venv (needs python3-venv and PyPI)"
    [ -x "$venv/bin/aws" ] && export PATH="$venv/bin:$PATH"
    command -v aws >/dev/null 2>&1 && return 0
    log "installing the AWS CLI (PyPI awscli) into $venv: the E2E tests invoke functions with it"
    python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q awscli >&2 ||
        die "could not install the AWS CLI into $venv (needs python3-venv and PyPI)"
    export PATH="$venv/bin:$PATH"
}
