#!/usr/bin/env bash
# Deploy CI (docs/JETSON.md): builds the `fieldtune` binary for aarch64 (Jetson, JetPack 5/6) and
# x86_64 with cargo-zigbuild against glibc 2.31, with GStreamer sources linked against Debian
# bullseye's GStreamer 1.18 (scripts/ci/gst-sysroot.sh), and fails if either binary needs a newer
# glibc symbol, lacks the GStreamer libraries among its NEEDED entries, links anything else, or
# imports GStreamer/GLib API newer than JetPack 5's 1.16 / 2.64 (scripts/ci/check_gst_api.py);
# runs the aarch64 binary under qemu-aarch64-static (doctor, eval and a few adapt steps on tract,
# then the same on ONNX Runtime from the aarch64 PyPI wheel; then `run` on GStreamer sources with
# the arm64 GStreamer libraries: videotestsrc and an MJPEG file) and prints how long each step
# took; builds the .deb for amd64 and tests it for real on this machine (install, a bounded run
# of the unit's ExecStart as the service user on the shipped demo and on a GStreamer source,
# upgrade keeping state and conffile edits, remove, purge: scripts/ci/test-deb.sh); builds the
# arm64 .deb from the zigbuild binary and checks its contents, Depends and binary.
#
# Usage: scripts/ci/ci-deploy.sh [STEP...]   steps: tools cross qemu deb-amd64 deb-arm64 (default: all)
#
# Needs (installed by .ci/run): qemu-user-static, libc6-arm64-cross, libgcc-s1-arm64-cross,
# libstdc++6-arm64-cross, binutils-aarch64-linux-gnu, pkg-config; root for the package test. Tools
# from the registries, cached under $FIELDTUNE_PKG_CACHE (default /tmp/fieldtune-pkgs)/deploy-tools:
# ziglang + cargo-zigbuild (PyPI, in a venv), cargo-deb (crates.io), the aarch64 ONNX Runtime;
# the GStreamer sysroots in $FIELDTUNE_PKG_CACHE/{arm64,amd64}-gst-sysroot (Debian's archive).
#
# Build profile: `dist` (Cargo.toml) = release (opt-level 3: adaptation runs on the device, on
# tract when no ONNX Runtime is there, and is several times slower at lower levels) with symbols
# stripped (a small package, no aarch64 strip tool needed). Release already uses 16 codegen
# units; LTO stays off (it would add minutes to every cold build here). Both architectures build
# with zig for glibc 2.31 so one package runs on Ubuntu 20.04 (JetPack 5) and newer. Target dir:
# $CARGO_TARGET_DIR, default $FIELDTUNE_PKG_CACHE/deploy-target (kept between CI runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
export CARGO_TERM_COLOR=never

cache="${FIELDTUNE_PKG_CACHE:-/tmp/fieldtune-pkgs}"
tools="${cache}/deploy-tools"
# Release builds for two targets do not share anything with the test builds, so they get their
# own target dir in the package cache: CI runs on a machine that ran them before start warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${cache}/deploy-target}"
profile=dist
features=linux-gpio,gstreamer
glibc=2.31
# JetPack 5 (Ubuntu 20.04): GStreamer 1.16, GLib 2.64. The binary may import no newer API.
gst_api_max=1.16
glib_api_max=2.64
ort_version=1.31.1
zig_version=0.17.1
zigbuild_version=0.24.1
deb_version=3.8.0
out="${repo}/out/deploy"
arm=aarch64-unknown-linux-gnu
x86=x86_64-unknown-linux-gnu

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(tools cross qemu deb-amd64 deb-arm64)
want() { local s; for s in "${steps[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

# Seconds since $1 (from `now`), one decimal.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { printf '[time] %-44s %6s s\n' "$1" "$2" | tee -a "${out}/timings.txt"; }

mkdir -p "${out}"
: > "${out}/timings.txt"
python="${PYTHON:-$(command -v python3)}"
export PATH="${tools}/venv/bin:${tools}/cargo/bin:${PATH}"

tools_step() {
    echo "== deploy tools (cached in ${tools})"
    local t0; t0=$(now)
    for c in qemu-aarch64-static aarch64-linux-gnu-objdump; do
        command -v "$c" >/dev/null || {
            echo "error: $c missing: apt-get install qemu-user-static binutils-aarch64-linux-gnu" >&2
            exit 1
        }
    done
    for f in /usr/aarch64-linux-gnu/lib/libc.so.6 /usr/aarch64-linux-gnu/lib/libgcc_s.so.1 \
        /usr/aarch64-linux-gnu/lib/libstdc++.so.6; do
        [[ -e "$f" ]] || {
            echo "error: $f missing: apt-get install libc6-arm64-cross libgcc-s1-arm64-cross libstdc++6-arm64-cross" >&2
            exit 1
        }
    done
    rustup target add "${arm}" >/dev/null
    local stamp="${tools}/venv/.fieldtune-tools"
    local want_py="ziglang==${zig_version} cargo-zigbuild==${zigbuild_version}"
    if [[ ! -f "${stamp}" ]] || [[ "$(cat "${stamp}")" != "${want_py}" ]]; then
        rm -rf "${tools}/venv"
        mkdir -p "${tools}"
        "${python}" -m venv "${tools}/venv"
        # shellcheck disable=SC2086
        "${tools}/venv/bin/pip" install -q --cache-dir "${cache}/pip-cache" ${want_py}
        echo "${want_py}" > "${stamp}"
    fi
    if ! cargo deb --version 2>/dev/null | grep -q "${deb_version}"; then
        cargo install -q cargo-deb --version "=${deb_version}" --locked --root "${tools}/cargo"
    fi
    echo "zig $(python3 -m ziglang version), $(cargo-zigbuild --version | sed -n 1p), $(cargo deb --version)"
    timing "tools" "$(since "$t0")"
}

# Debian architecture and multiarch triplet of a Rust target triple.
deb_arch() { case "$1" in aarch64-*) echo arm64 ;; x86_64-*) echo amd64 ;; esac; }
multiarch() { case "$1" in aarch64-*) echo aarch64-linux-gnu ;; x86_64-*) echo x86_64-linux-gnu ;; esac; }

# The GStreamer sysroot of a Debian architecture (Debian bullseye's libraries, cached: fast
# when present); prints its path.
gst_sysroot() {
    local t0 dir
    t0=$(now)
    dir=$(bash scripts/ci/gst-sysroot.sh "$1" | tail -n 1)
    timing "GStreamer sysroot $1" "$(since "$t0")" >&2
    echo "${dir}"
}

# zigbuild for one triple against glibc ${glibc}, GStreamer from the triple's sysroot (found by
# pkg-config through the target-specific variables, so build scripts for the host are not
# affected); prints the binary's path.
build() {
    local triple=$1 t0 sysroot tv cross=()
    sysroot=$(gst_sysroot "$(deb_arch "${triple}")")
    tv=${triple//-/_}
    [[ "${triple}" == "$(rustc -vV | sed -n 's/^host: //p')" ]] || cross=(PKG_CONFIG_ALLOW_CROSS=1)
    t0=$(now)
    env "${cross[@]}" "PKG_CONFIG_SYSROOT_DIR_${tv}=${sysroot}" \
        "PKG_CONFIG_LIBDIR_${tv}=${sysroot}/usr/lib/$(multiarch "${triple}")/pkgconfig:${sysroot}/usr/share/pkgconfig" \
        cargo zigbuild -q -p fieldtune --profile "${profile}" --features "${features}" \
        --target "${triple}.${glibc}" >&2
    timing "cargo zigbuild ${triple}.${glibc}" "$(since "$t0")" >&2
    echo "${CARGO_TARGET_DIR}/${triple}/${profile}/fieldtune"
}

# Fails unless the binary links the GStreamer libraries (NEEDED) and nothing but them, GLib and
# glibc: the package's Depends (runtime/cli/Cargo.toml) provide exactly these.
check_needed() {
    local bin=$1 label=$2 needed l
    needed=$(readelf -d "${bin}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    echo "${label}: NEEDED $(echo "${needed}" | tr '\n' ' ')"
    for l in libgstreamer-1.0.so.0 libgstapp-1.0.so.0 libgstvideo-1.0.so.0 libglib-2.0.so.0 libgobject-2.0.so.0; do
        grep -qx "${l}" <<< "${needed}" || { echo "error: ${bin} does not link ${l} (NEEDED: $(echo ${needed}))" >&2; exit 1; }
    done
    l=$(grep -vE '^(libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-(aarch64|x86-64)\.so\.[12]|libgst(reamer|base|app|video)-1\.0\.so\.0|lib(glib|gobject|gio|gmodule)-2\.0\.so\.0)$' <<< "${needed}" || true)
    [[ -z "${l}" ]] || { echo "error: ${bin} links $(echo ${l}), which the package does not depend on" >&2; exit 1; }
}

# Fails when the binary imports GStreamer/GLib API newer than JetPack 5's or a symbol the
# sysroot's (bullseye, 1.18) libraries do not define.
check_gst_api() {
    local bin=$1 objdump=$2 triple=$3 sysroot
    sysroot="${cache}/$(deb_arch "${triple}")-gst-sysroot"
    "${python}" scripts/ci/check_gst_api.py "${bin}" --objdump "${objdump}" --lock Cargo.lock \
        --libdir "${sysroot}/usr/lib/$(multiarch "${triple}")" --gst-max "${gst_api_max}" \
        --glib-max "${glib_api_max}"
}

# Fails when the binary needs a glibc symbol version newer than ${glibc}.
check_glibc() {
    local bin=$1 objdump=$2 label=$3 max newer
    max=$("${objdump}" -T "${bin}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    echo "${label}: highest glibc symbol version GLIBC_${max} (limit ${glibc})"
    newer=$(printf '%s\n%s\n' "${glibc}" "${max}" | sort -V | tail -n 1)
    if [[ "${newer}" != "${glibc}" ]]; then
        echo "error: ${bin} needs GLIBC_${max} > ${glibc}; symbols:" >&2
        "${objdump}" -T "${bin}" | grep -E "GLIBC_(2\.(3[2-9]|[4-9][0-9])|[3-9])" >&2 || true
        exit 1
    fi
    echo "${max}" > "${out}/glibc-max-${label}.txt"
}

cross_step() {
    echo "== aarch64 and x86_64 release builds (zig, glibc ${glibc})"
    local bin
    bin=$(build "${arm}")
    aarch64-linux-gnu-readelf -h "${bin}" | grep -q 'AArch64' || { echo "error: ${bin} is not AArch64" >&2; exit 1; }
    check_glibc "${bin}" aarch64-linux-gnu-objdump "${arm}"
    check_needed "${bin}" "${arm}"
    check_gst_api "${bin}" aarch64-linux-gnu-objdump "${arm}"
    bin=$(build "${x86}")
    check_glibc "${bin}" objdump "${x86}"
    check_needed "${bin}" "${x86}"
    check_gst_api "${bin}" objdump "${x86}"
}

qemu_step() {
    echo "== aarch64 binary under qemu-aarch64-static"
    local bin="${CARGO_TARGET_DIR}/${arm}/${profile}/fieldtune"
    [[ -x "${bin}" ]] || { echo "error: ${bin} missing: run the cross step first" >&2; exit 1; }
    # qemu-user 7.2 shows aarch64 programs the host's x86 /proc/cpuinfo; ONNX Runtime's cpuinfo
    # library then finds no ARM processor and dereferences NULL while the library loads
    # (SIGSEGV after reading /sys/devices/system/cpu). So every emulated run gets an ARM
    # /proc/cpuinfo (Cortex-A72 fields, one entry per CPU) bind-mounted in a private mount
    # namespace (root). A real Jetson needs nothing of this.
    local cpuinfo="${out}/qemu-cpuinfo" i
    : > "${cpuinfo}"
    for ((i = 0; i < $(getconf _NPROCESSORS_CONF); i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >> "${cpuinfo}"
    done
    # The binary links GStreamer and GLib: the emulated loader finds them in the arm64 sysroot
    # (glibc comes through -L). -E sets a variable for the emulated program only.
    local sysroot
    sysroot=$(gst_sysroot arm64)
    local q=(unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "${cpuinfo}"
        qemu-aarch64-static -L /usr/aarch64-linux-gnu
        -E "LD_LIBRARY_PATH=${sysroot}/usr/lib/aarch64-linux-gnu:${sysroot}/lib/aarch64-linux-gnu")
    [[ "$(id -u)" == 0 ]] || { echo "error: the qemu step needs root (a private mount namespace)" >&2; exit 1; }
    local work="${out}/qemu" t0
    rm -rf "${work}"
    mkdir -p "${work}"
    # 10 OpenCV digits per class (the second domain) and 10 MNIST anchors per class: emulation
    # runs this CNN 20-50x slower than the host does.
    for c in 0 1 2 3 4 5 6 7 8 9; do
        mkdir -p "${work}/eval/${c}" "${work}/anchors/${c}"
        find "data/opencv-digits/${c}" -type f | sort | sed -n 1,10p | xargs -I{} cp {} "${work}/eval/${c}/"
        find "models/mnist-cnn/anchors/${c}" -type f | sort | sed -n 1,10p | xargs -I{} cp {} "${work}/anchors/${c}/"
    done
    echo "-- ONNX Runtime ${ort_version} for aarch64 (PyPI wheel, cached)"
    bash scripts/install-ort.sh --arch aarch64 --version "${ort_version}" \
        --prefix "${cache}/ort-aarch64-${ort_version}" | tail -n 1
    local lib
    lib=$(ls -1 "${cache}/ort-aarch64-${ort_version}/lib"/libonnxruntime.so.* | sort | tail -n 1)

    t0=$(now)
    "${q[@]}" "${bin}" doctor | tee "${work}/doctor.txt"
    timing "qemu: doctor" "$(since "$t0")"
    grep -q '^CPU: aarch64' "${work}/doctor.txt" || { echo "error: doctor does not report aarch64" >&2; exit 1; }
    t0=$(now)
    "${q[@]}" "${bin}" --ort-lib "${lib}" doctor | tee "${work}/doctor-ort.txt"
    timing "qemu: doctor --ort-lib (aarch64 wheel)" "$(since "$t0")"
    grep -q "^ONNX Runtime: ${ort_version} from " "${work}/doctor-ort.txt" \
        || { echo "error: the aarch64 ONNX Runtime ${ort_version} did not load under qemu" >&2; exit 1; }

    local engine args acc
    for engine in tract ort; do
        args=(--engine "${engine}")
        [[ "${engine}" == ort ]] && args+=(--ort-lib "${lib}")
        t0=$(now)
        "${q[@]}" "${bin}" "${args[@]}" eval --model models/mnist-cnn --data "${work}/eval" \
            | tee "${work}/eval-${engine}.txt"
        timing "qemu: eval ${engine} (100 images)" "$(since "$t0")"
        acc=$(sed -n 's/.*accuracy: \([0-9.]*\).*/\1/p' "${work}/eval-${engine}.txt" | sed -n 1p)
        awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 0.8) }' \
            || { echo "error: ${engine} accuracy ${acc:-none} under qemu (expected >= 0.8)" >&2; exit 1; }
        t0=$(now)
        "${q[@]}" "${bin}" "${args[@]}" adapt --model models/mnist-cnn \
            --labeled "${work}/anchors" --unlabeled "${work}/eval" --steps 2 --batch 8 \
            --out "${work}/adapted-${engine}"
        timing "qemu: adapt ${engine} (2 steps, batch 8)" "$(since "$t0")"
        [[ -f "${work}/adapted-${engine}/model.onnx" ]] \
            || { echo "error: adapt on ${engine} wrote no model" >&2; exit 1; }
    done
    qemu_gstreamer "${bin}" "${work}" "${q[@]}"
    rm -rf "${work}"
}

# `fieldtune run` on GStreamer sources under qemu with Debian bullseye's arm64 GStreamer 1.18
# (the sysroot): a videotestsrc pattern, then an MJPEG AVI that arm64 gst-launch-1.0 encodes
# here from 30 MNIST digits (3 per class, interleaved) and that must be classified >= 27/30
# right; `doctor` with the sysroot's plugins and with none (it names what is missing), and a
# folder source with no plugins at all. $3...: the qemu command line.
qemu_gstreamer() {
    local bin=$1 work=$2
    shift 2
    local sysroot lib t0 frames right
    sysroot=$(gst_sysroot arm64)
    lib="${sysroot}/usr/lib/aarch64-linux-gnu"
    echo "-- GStreamer sources under qemu (Debian arm64 GStreamer in ${sysroot})"
    # GStreamer scans the sysroot's plugins in-process with a registry of its own
    # (GST_REGISTRY_FORK=no: its scanner helper is an arm64 program, which the host could only
    # start through binfmt_misc); $@ already sets LD_LIBRARY_PATH to the sysroot's libraries.
    local gq=("$@" -E "GST_PLUGIN_SYSTEM_PATH=${lib}/gstreamer-1.0" -E GST_PLUGIN_PATH=
        -E GST_REGISTRY_FORK=no -E "GST_REGISTRY=${work}/gst-registry.bin")
    local nq=("$@" -E "GST_PLUGIN_SYSTEM_PATH=${work}/no-plugins" -E GST_PLUGIN_PATH=
        -E GST_REGISTRY_FORK=no -E "GST_REGISTRY=${work}/gst-registry-none.bin")
    mkdir -p "${work}/no-plugins" "${work}/png"

    t0=$(now)
    "${gq[@]}" "${bin}" doctor | tee "${work}/doctor-gst.txt"
    timing "qemu: doctor with GStreamer plugins" "$(since "$t0")"
    grep -q '^GStreamer: 1\.18' "${work}/doctor-gst.txt" \
        || { echo "error: doctor under qemu does not report GStreamer 1.18" >&2; exit 1; }
    local name
    for name in appsink videoconvert filesrc decodebin jpegdec videotestsrc; do
        grep -qE "^  ok +${name} " "${work}/doctor-gst.txt" \
            || { echo "error: doctor under qemu does not find ${name}" >&2; exit 1; }
    done
    grep -qE '^  missing +v4l2src .*install gstreamer1.0-plugins-good' "${work}/doctor-gst.txt" \
        || { echo "error: doctor does not name v4l2src's package (the sysroot has no v4l2 plugin)" >&2; exit 1; }
    "${nq[@]}" "${bin}" doctor | grep '^GStreamer\|^  missing  appsink\|elements missing' | tee "${work}/doctor-nogst.txt"
    grep -qE '^  missing +appsink .*install gstreamer1.0-plugins-base' "${work}/doctor-nogst.txt" \
        || { echo "error: doctor without plugins does not name appsink's package" >&2; exit 1; }

    # A config per source: the shipped CNN, 100 anchors (emulated start-up time is mostly their
    # evaluation), no triggers: this checks frames in and predictions out.
    gst_config() {
        cat > "${work}/$1.toml" <<EOF
model = "${repo}/models/mnist-cnn"
anchors = "${work}/anchors"
state_dir = "${work}/state-$1"
[source]
kind = "$2"
pipeline = "$3"
paths = ["${work}/eval/7"]
[pipeline]
when_full = "block"
[output]
path = "${work}/pred-$1.jsonl"
[trigger]
drift = false
manual_signal = false
EOF
    }

    t0=$(now)
    gst_config folder folder ""
    "${nq[@]}" "${bin}" --engine tract run --config "${work}/folder.toml" 2>&1 | tail -n 3
    timing "qemu: run, folder source, no GStreamer plugins" "$(since "$t0")"
    frames=$(grep -c . "${work}/pred-folder.jsonl" || true)
    [[ "${frames}" == 10 ]] || { echo "error: folder source without plugins: ${frames} predictions, want 10" >&2; exit 1; }

    t0=$(now)
    gst_config videotestsrc gstreamer \
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=64,height=48 ! videoconvert ! appsink name=sink"
    "${gq[@]}" "${bin}" --engine tract run --config "${work}/videotestsrc.toml" 2>&1 | tail -n 8
    timing "qemu: run, videotestsrc (30 frames)" "$(since "$t0")"
    frames=$(grep -c '"class_id":[0-9]' "${work}/pred-videotestsrc.jsonl" || true)
    [[ "${frames}" == 30 ]] || { echo "error: videotestsrc under qemu: ${frames} predictions, want 30" >&2; exit 1; }
    echo "videotestsrc: ${frames} frames classified; first: $(head -n 1 "${work}/pred-videotestsrc.jsonl")"

    local i=0 k c f labels=()
    for k in 0 1 2; do
        for c in 0 1 2 3 4 5 6 7 8 9; do
            f=$(find "data/mnist/${c}" -type f -name '*.png' | sort | sed -n "$((k * 50 + 1))p")
            cp "${f}" "${work}/png/$(printf %05d "${i}").png"
            labels+=("${c}")
            i=$((i + 1))
        done
    done
    t0=$(now)
    "${gq[@]}" "${sysroot}/usr/bin/gst-launch-1.0" -q multifilesrc location="${work}/png/%05d.png" index=0 \
        stop-index=$((i - 1)) caps=image/png,framerate=30/1 ! pngdec ! videoconvert ! video/x-raw,format=I420 \
        ! jpegenc quality=95 ! avimux ! filesink location="${work}/digits.avi"
    [[ -s "${work}/digits.avi" ]] || { echo "error: gst-launch-1.0 under qemu wrote no ${work}/digits.avi" >&2; exit 1; }
    echo "digits.avi: ${i} MNIST digits as MJPEG, $(stat -c %s "${work}/digits.avi") bytes"
    gst_config mjpeg gstreamer "filesrc location=${work}/digits.avi ! decodebin ! videoconvert ! appsink name=sink"
    "${gq[@]}" "${bin}" --engine tract run --config "${work}/mjpeg.toml" 2>&1 | tail -n 8
    timing "qemu: MJPEG file: encode + run (${i} frames)" "$(since "$t0")"
    frames=$(grep -c . "${work}/pred-mjpeg.jsonl" || true)
    [[ "${frames}" == "${i}" ]] || { echo "error: MJPEG file under qemu: ${frames} predictions, want ${i}" >&2; exit 1; }
    right=$(sed -n 's/.*"class_id":\([0-9]*\).*/\1/p' "${work}/pred-mjpeg.jsonl" \
        | paste -d' ' - <(printf '%s\n' "${labels[@]}") | awk '$1 == $2' | wc -l)
    echo "MJPEG file: ${right}/${i} digits classified right"
    [[ "${right}" -ge 27 ]] || { echo "error: MJPEG file under qemu: ${right}/${i} right, want >= 27" >&2; exit 1; }
}

deb_amd64_step() {
    echo "== amd64 .deb: build, install, run as the service user, upgrade, remove, purge"
    local t0
    [[ -x "${CARGO_TARGET_DIR}/${x86}/${profile}/fieldtune" ]] || build "${x86}" >/dev/null
    t0=$(now)
    bash scripts/ci/test-deb.sh "${out}"
    timing "amd64 package test" "$(since "$t0")"
}

deb_arm64_step() {
    echo "== arm64 .deb from the zigbuild binary"
    local bin="${CARGO_TARGET_DIR}/${arm}/${profile}/fieldtune" deb dir
    [[ -x "${bin}" ]] || { echo "error: ${bin} missing: run the cross step first" >&2; exit 1; }
    rm -f "${out}"/fieldtune_*_arm64.deb
    cargo deb -p fieldtune --target "${arm}" --profile "${profile}" --no-build --no-strip \
        --output "${out}" >/dev/null
    deb=$(ls -1 "${out}"/fieldtune_*_arm64.deb)
    dpkg-deb -I "${deb}" | tee "${out}/arm64-info.txt"
    dpkg-deb -c "${deb}" > "${out}/arm64-contents.txt"
    grep -q '^ Architecture: arm64$' "${out}/arm64-info.txt"
    grep -q '^ Depends: .*libc6 (>= 2.31)' "${out}/arm64-info.txt"
    local dep
    for dep in 'libgstreamer1.0-0 (>= 1.16)' 'libgstreamer-plugins-base1.0-0 (>= 1.16)' 'libglib2.0-0'; do
        grep -qF -- "${dep}" <(grep '^ Depends:' "${out}/arm64-info.txt") \
            || { echo "error: ${deb} does not depend on ${dep}" >&2; exit 1; }
    done
    grep -q '^ Recommends: .*gstreamer1.0-plugins-base' "${out}/arm64-info.txt" \
        || { echo "error: ${deb} does not recommend gstreamer1.0-plugins-base" >&2; exit 1; }
    local f
    for f in ./usr/bin/fieldtune ./etc/fieldtune/fieldtune.toml \
        ./usr/share/fieldtune/models/mnist-cnn/model.onnx \
        ./usr/share/fieldtune/models/mnist-cnn/anchors/0/ \
        ./usr/share/fieldtune/data/opencv-digits/9/ ./usr/share/doc/fieldtune/JETSON.md; do
        grep -q " ${f}\$" "${out}/arm64-contents.txt" || { echo "error: ${deb} lacks ${f}" >&2; exit 1; }
    done
    grep -qE ' \./(usr/)?lib/systemd/system/fieldtune\.service$' "${out}/arm64-contents.txt" \
        || { echo "error: ${deb} lacks the systemd unit" >&2; exit 1; }
    dir=$(mktemp -d)
    dpkg-deb -x "${deb}" "${dir}"
    dpkg-deb -e "${deb}" "${dir}/DEBIAN"
    cmp "${bin}" "${dir}/usr/bin/fieldtune" || { echo "error: packaged binary differs from the build" >&2; exit 1; }
    grep -qx '/etc/fieldtune/fieldtune.toml' "${dir}/DEBIAN/conffiles"
    check_glibc "${dir}/usr/bin/fieldtune" aarch64-linux-gnu-objdump arm64-deb
    check_needed "${dir}/usr/bin/fieldtune" arm64-deb
    echo "$(basename "${deb}"): $(grep -c . "${out}/arm64-contents.txt") entries, $(du -h "${deb}" | cut -f1)"
    rm -rf "${dir}"
}

want tools && tools_step
want cross && cross_step
want qemu && qemu_step
want deb-amd64 && deb_amd64_step
want deb-arm64 && deb_arm64_step
echo "== deploy timings"
cat "${out}/timings.txt"
