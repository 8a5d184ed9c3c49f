#!/usr/bin/env bash
# Deploy CI (docs/JETSON.md): builds the `fieldtune` binary for aarch64 (Jetson, JetPack 5/6) and
# x86_64 with cargo-zigbuild against glibc 2.31 and fails if either needs a newer glibc symbol;
# runs the aarch64 binary under qemu-aarch64-static (doctor, eval and a few adapt steps on tract,
# then the same on ONNX Runtime from the aarch64 PyPI wheel) and prints how long each step took;
# builds the .deb for amd64 and tests it for real on this machine (install, a bounded run of the
# unit's ExecStart as the service user, upgrade keeping state and conffile edits, remove, purge:
# scripts/ci/test-deb.sh); builds the arm64 .deb from the zigbuild binary and checks its contents.
#
# Usage: scripts/ci/ci-deploy.sh [STEP...]   steps: tools cross qemu deb-amd64 deb-arm64 (default: all)
#
# Needs (installed by .ci/run): qemu-user-static, libc6-arm64-cross, libgcc-s1-arm64-cross,
# libstdc++6-arm64-cross, binutils-aarch64-linux-gnu; root for the package test. Tools from the
# registries, cached under $FIELDTUNE_PKG_CACHE (default /tmp/fieldtune-pkgs)/deploy-tools:
# ziglang + cargo-zigbuild (PyPI, in a venv), cargo-deb (crates.io), the aarch64 ONNX Runtime.
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
features=linux-gpio
glibc=2.31
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

# zigbuild for one triple against glibc ${glibc}; prints the binary's path.
build() {
    local triple=$1 t0
    t0=$(now)
    cargo zigbuild -q -p fieldtune --profile "${profile}" --features "${features}" \
        --target "${triple}.${glibc}" >&2
    timing "cargo zigbuild ${triple}.${glibc}" "$(since "$t0")" >&2
    echo "${CARGO_TARGET_DIR}/${triple}/${profile}/fieldtune"
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
    echo "NEEDED: $(aarch64-linux-gnu-readelf -d "${bin}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    bin=$(build "${x86}")
    check_glibc "${bin}" objdump "${x86}"
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
    local q=(unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "${cpuinfo}"
        qemu-aarch64-static -L /usr/aarch64-linux-gnu)
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
    rm -rf "${work}"
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
