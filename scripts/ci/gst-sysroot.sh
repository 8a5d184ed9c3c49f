#!/usr/bin/env bash
# A GStreamer sysroot for the package builds and the qemu run (docs/JETSON.md, "GStreamer in the
# package"): Debian 11's (bullseye) GStreamer 1.18 and GLib 2.66 for one Debian architecture,
# unpacked from their .debs into ${FIELDTUNE_PKG_CACHE:-/tmp/fieldtune-pkgs}/<arch>-gst-sysroot.
# Bullseye has glibc 2.31, as JetPack 5's Ubuntu 20.04 has, and the oldest GStreamer Debian
# still serves.
#
# Nothing is installed into this machine's dpkg and its apt sources are not touched: a private
# apt state under the cache (its own sources list, package lists and an empty status file)
# reads bullseye's index, `apt-get download` fetches the fixed package list below, and
# `dpkg-deb -x` unpacks it. The -dev packages give the .pc files and the unversioned .so links
# that pkg-config and the zig link need (no header is compiled: the Rust bindings declare the
# C API themselves); the runtime packages and the plugins kept serve the emulated run.
#
# Checks (any failure stops with the file and what is wrong): pkg-config resolves every module
# the gstreamer-rs crates ask for; no symlink points outside the sysroot; every library the
# binary links and every plugin kept finds each of its NEEDED libraries in the sysroot (or is
# glibc's, which the cross libc or the host provides).
#
# Usage: scripts/ci/gst-sysroot.sh arm64|amd64   (the sysroot's path is the last line printed)
# Needs: apt-get, dpkg-deb, readelf, pkg-config (all in Debian's base or .ci/run's packages).
set -euo pipefail

arch=${1:-}
case "${arch}" in
    arm64) triplet=aarch64-linux-gnu ;;
    amd64) triplet=x86_64-linux-gnu ;;
    *) echo "usage: $0 arm64|amd64" >&2; exit 2 ;;
esac
cache="${FIELDTUNE_PKG_CACHE:-/tmp/fieldtune-pkgs}"
suite=bullseye
sysroot="${cache}/${arch}-gst-sysroot"
aptdir="${cache}/gst-apt-${suite}"

# Runtime libraries: GStreamer, GLib and everything their NEEDED entries reach (glibc aside);
# plugins-base/-good and tools for the emulated pipelines (only the plugins below are kept).
runtime_pkgs=(libgstreamer1.0-0 libgstreamer-plugins-base1.0-0 libglib2.0-0 libdw1 libelf1
    libunwind8 liblzma5 libbz2-1.0 zlib1g libffi7 libmount1 libblkid1 libpcre3 libselinux1
    libpcre2-8-0 liborc-0.4-0 libjpeg62-turbo libpng16-16
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-tools)
# .pc files and .so links: gstreamer-rs asks pkg-config for gstreamer-{1.0,base,video,app},
# glib, gobject and gio; pkg-config also reads their Requires.private modules (libsepol1: the
# library libsepol1-dev's .so link points to).
dev_pkgs=(libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libglib2.0-dev libpcre3-dev
    libffi-dev libunwind-dev libdw-dev libelf-dev zlib1g-dev liblzma-dev libbz2-dev
    liborc-0.4-dev libmount-dev libblkid-dev libselinux1-dev libpcre2-dev libsepol1-dev libsepol1)
# Plugins the CI pipelines use: videotestsrc; PNG frames -> MJPEG AVI (multifilesrc, pngdec,
# jpegenc, avimux, filesink); the AVI back (filesrc, decodebin, avidemux, jpegdec); videoconvert
# and appsink everywhere. Others are removed: their libraries are not in the sysroot.
plugins=(coreelements app videotestsrc videoconvert playback typefindfunctions jpeg avi png
    multifile)
pc_modules=(gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0 gstreamer-app-1.0 glib-2.0
    gobject-2.0 gio-2.0)
# Libraries glibc provides (the cross libc for arm64 under qemu, the system's on amd64).
glibc_libs=" libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 ld-linux-aarch64.so.1 ld-linux-x86-64.so.2 "

fail() { echo "error: $*" >&2; exit 1; }
stamp_text="${suite} ${arch} v1 ${runtime_pkgs[*]} ${dev_pkgs[*]} ${plugins[*]}"
stamp="${sysroot}/.fieldtune-gst-sysroot"

export PKG_CONFIG_SYSROOT_DIR="${sysroot}"
export PKG_CONFIG_LIBDIR="${sysroot}/usr/lib/${triplet}/pkgconfig:${sysroot}/usr/share/pkgconfig"
unset PKG_CONFIG_PATH

if [[ ! -f "${stamp}" ]] || [[ "$(cat "${stamp}")" != "${stamp_text}" ]]; then
    for c in apt-get dpkg-deb readelf pkg-config; do
        command -v "$c" >/dev/null || fail "$c missing (apt-get install apt dpkg binutils pkgconf)"
    done
    echo "-- ${arch} GStreamer sysroot from Debian ${suite} (private apt state in ${aptdir})" >&2
    mkdir -p "${aptdir}/lists/partial" "${aptdir}/archives/partial" "${aptdir}/parts" "${aptdir}/prefs"
    : > "${aptdir}/status"
    echo "deb [arch=arm64,amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian ${suite} main" \
        > "${aptdir}/sources.list"
    apt_opts=(-q -o Dir::Etc::SourceList="${aptdir}/sources.list" -o Dir::Etc::SourceParts="${aptdir}/parts"
        -o Dir::Etc::Preferences="${aptdir}/preferences" -o Dir::Etc::PreferencesParts="${aptdir}/prefs"
        -o Dir::State="${aptdir}" -o Dir::State::Lists="${aptdir}/lists" -o Dir::State::status="${aptdir}/status"
        -o Dir::Cache="${aptdir}" -o Dir::Cache::archives="${aptdir}/archives"
        -o APT::Architecture="${arch}" -o APT::Architectures::=arm64 -o APT::Architectures::=amd64
        -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
        -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update >&2 || fail "apt-get update of Debian ${suite} (${aptdir}/sources.list) failed"
    debs="${aptdir}/debs-${arch}"
    rm -rf "${debs}" "${sysroot}"
    mkdir -p "${debs}" "${sysroot}"
    (cd "${debs}" && apt-get "${apt_opts[@]}" download \
        $(printf '%s:'"${arch}"' ' "${runtime_pkgs[@]}" "${dev_pkgs[@]}") >&2) \
        || fail "apt-get download from Debian ${suite} failed (list in $0)"
    for d in "${debs}"/*.deb; do
        dpkg-deb -x "$d" "${sysroot}" || fail "cannot unpack $d"
    done
    rm -rf "${sysroot}/usr/share/doc" "${sysroot}/usr/share/man" "${sysroot}/usr/share/locale" "${debs}"
    # Absolute symlinks (e.g. /lib/<triplet>/libfoo.so.1 from a -dev package) would point into
    # this machine's root: make them relative inside the sysroot.
    while IFS= read -r link; do
        target=$(readlink "${link}")
        [[ -e "${sysroot}${target}" ]] || fail "${link} -> ${target}: not in the sysroot"
        ln -sfn "$(realpath --relative-to="$(dirname "${link}")" "${sysroot}${target}")" "${link}"
    done < <(find "${sysroot}" -type l -lname '/*')
    plugdir="${sysroot}/usr/lib/${triplet}/gstreamer-1.0"
    for f in "${plugdir}"/libgst*.so; do
        name=$(basename "$f" .so)
        name=${name#libgst}
        [[ " ${plugins[*]} " == *" ${name} "* ]] || rm -f "$f"
    done
    for p in "${plugins[@]}"; do
        [[ -f "${plugdir}/libgst${p}.so" ]] || fail "${plugdir}/libgst${p}.so missing after unpacking"
    done
    echo "${stamp_text}" > "${stamp}"
fi

pkg-config --exists --print-errors "${pc_modules[@]}" \
    || fail "pkg-config cannot resolve ${pc_modules[*]} in ${sysroot} (PKG_CONFIG_LIBDIR=${PKG_CONFIG_LIBDIR})"

# NEEDED closure: the libraries the binary links, the plugins and gst-launch-1.0.
libdirs=("${sysroot}/usr/lib/${triplet}" "${sysroot}/lib/${triplet}")
find_lib() {
    local d
    for d in "${libdirs[@]}"; do
        [[ -e "$d/$1" ]] && { echo "$d/$1"; return 0; }
    done
    return 1
}
queue=("${sysroot}/usr/bin/gst-launch-1.0")
for p in "${plugins[@]}"; do queue+=("${sysroot}/usr/lib/${triplet}/gstreamer-1.0/libgst${p}.so"); done
for l in libgstreamer-1.0.so.0 libgstbase-1.0.so.0 libgstvideo-1.0.so.0 libgstapp-1.0.so.0 \
    libgobject-2.0.so.0 libglib-2.0.so.0 libgio-2.0.so.0; do
    f=$(find_lib "$l") || fail "${l} missing in ${sysroot}"
    queue+=("$f")
done
declare -A seen=()
while [[ ${#queue[@]} -gt 0 ]]; do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n "${seen[$f]:-}" ]] && continue
    seen[$f]=1
    while IFS= read -r need; do
        [[ "${glibc_libs}" == *" ${need} "* ]] && continue
        dep=$(find_lib "${need}") \
            || fail "${f#"${sysroot}"/} needs ${need}, which is not in ${sysroot}: add its ${suite} package to runtime_pkgs in $0"
        queue+=("$(realpath "${dep}")")
    done < <(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done
echo "${arch} sysroot: GStreamer $(pkg-config --modversion gstreamer-1.0), GLib $(pkg-config --modversion glib-2.0) (Debian ${suite}), plugins: ${plugins[*]}; ${#seen[@]} ELF files resolve their NEEDED libraries" >&2
echo "${sysroot}"
