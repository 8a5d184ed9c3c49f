#!/usr/bin/env bash
# Install the ONNX Runtime shared library from PyPI into a project-local directory.
#
# Usage: scripts/install-ort.sh [--gpu] [--prefix DIR] [--version X.Y.Z] [--arch ARCH]
#    e.g. scripts/install-ort.sh --version 1.19.2 --prefix .ort/oldest   (a second library
#         beside .ort/lib, for tests against an older ONNX Runtime: ORT_DYLIB_PATH=...)
#
#   --gpu          install onnxruntime-gpu (CUDA 13 / cuDNN 9, TensorRT 10 for the TRT EP)
#                  and its execution-provider libraries (libonnxruntime_providers_*.so)
#   --prefix DIR   install into DIR/lib (default: <repo>/.ort, which is git-ignored; for a foreign
#                  --arch the default is <repo>/.ort/<arch>, so the host's library stays usable)
#   --dir DIR      the same as --prefix DIR
#   --version V    ONNX Runtime version (default: 1.31.1). fieldtune loads 1.17 and newer,
#                  but PyPI's wheels ship libonnxruntime.so only from 1.19.0 on (1.17/1.18
#                  wheels hold just the Python module): older versions are refused here
#   --arch ARCH    x86_64 or aarch64 (default: this machine's, from uname -m); use aarch64 on an
#                  x86_64 host to prepare a library for a Jetson or for qemu-aarch64 tests
#
# Uses pip only ("pip download" of a manylinux wheel; nothing is installed into Python).
# Idempotent: when DIR/lib already holds the requested version and flavour it does nothing.
# fieldtune finds DIR/lib/libonnxruntime.so* automatically when DIR is <repo>/.ort; otherwise
# pass --ort-lib or set ORT_DYLIB_PATH to the printed path.
set -euo pipefail

version="1.31.1"
gpu=0
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
prefix=""
arch="$(uname -m)"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) gpu=1; shift ;;
        --prefix) [[ $# -ge 2 ]] || { echo "error: --prefix needs a directory" >&2; exit 2; }
                  prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --dir) [[ $# -ge 2 ]] || { echo "error: --dir needs a directory" >&2; exit 2; }
               prefix="$2"; shift 2 ;;
        --dir=*) prefix="${1#--dir=}"; shift ;;
        --version) [[ $# -ge 2 ]] || { echo "error: --version needs a value" >&2; exit 2; }
                   version="$2"; shift 2 ;;
        --version=*) version="${1#--version=}"; shift ;;
        --arch) [[ $# -ge 2 ]] || { echo "error: --arch needs a value" >&2; exit 2; }
                arch="$2"; shift 2 ;;
        --arch=*) arch="${1#--arch=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "${arch}" in
    x86_64|amd64) plat_arch="x86_64" ;;
    aarch64|arm64) plat_arch="aarch64" ;;
    *) echo "error: unsupported architecture ${arch} (x86_64 and aarch64 are supported)" >&2; exit 1 ;;
esac
if [[ -z "${prefix}" ]]; then
    case "$(uname -m)" in aarch64|arm64) host_arch="aarch64" ;; *) host_arch="x86_64" ;; esac
    if [[ "${plat_arch}" == "${host_arch}" ]]; then
        prefix="${repo_root}/.ort"
    else
        prefix="${repo_root}/.ort/${plat_arch}"
    fi
fi

if [[ ${gpu} -eq 1 ]]; then
    package="onnxruntime-gpu"
    flavour="gpu"
else
    package="onnxruntime"
    flavour="cpu"
fi

mkdir -p "${prefix}"
prefix="$(cd "${prefix}" && pwd)"
libdir="${prefix}/lib"
stamp="${libdir}/.fieldtune-ort"
want="${package}==${version} ${plat_arch}"

# Already installed with the same version, flavour and architecture?
if [[ -f "${stamp}" ]] && [[ "$(cat "${stamp}")" == "${want}" ]] \
    && compgen -G "${libdir}/libonnxruntime.so*" >/dev/null; then
    lib="$(ls -1 "${libdir}"/libonnxruntime.so* | sort | tail -n 1)"
    echo "ONNX Runtime ${version} (${flavour}, ${plat_arch}) already installed: ${lib}"
    exit 0
fi

python="${PYTHON:-python3}"
if ! "${python}" -m pip --version >/dev/null 2>&1; then
    echo "error: '${python} -m pip' is not available; install pip or set PYTHON" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

echo "Downloading ${package}==${version} for manylinux_2_28_${plat_arch} with pip ..."
"${python}" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform "manylinux_2_28_${plat_arch}" \
    --dest "${work}" "${package}==${version}"

wheel="$(ls -1 "${work}"/*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "${wheel}" ]]; then
    echo "error: pip did not produce a wheel for ${package}==${version}" >&2
    exit 1
fi

# Extract only the shared libraries (a wheel is a zip; python's zipfile avoids needing unzip).
patterns=("onnxruntime/capi/libonnxruntime.so*")
if [[ ${gpu} -eq 1 ]]; then
    patterns+=("onnxruntime/capi/libonnxruntime_providers_*.so")
fi
"${python}" - "${wheel}" "${work}/x" "${patterns[@]}" <<'PY'
import fnmatch, os, shutil, sys, zipfile
wheel, dest, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(dest, exist_ok=True)
n = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if any(fnmatch.fnmatch(name, p) for p in pats):
            target = os.path.join(dest, os.path.basename(name))
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o755)
            n += 1
if not any(f.startswith("libonnxruntime.so") for f in os.listdir(dest)):
    sys.exit("error: " + os.path.basename(wheel) + " holds no libonnxruntime.so (PyPI wheels ship"
             " the C library from ONNX Runtime 1.19.0 on; use a release archive or a source build"
             " with --build_shared_lib for an older version, then --ort-lib or ORT_DYLIB_PATH)")
PY

# Replace the previous install atomically-enough: stage, then move libraries into place.
mkdir -p "${libdir}"
rm -f "${libdir}"/libonnxruntime.so* "${libdir}"/libonnxruntime_providers_*.so "${stamp}"
mv "${work}/x"/* "${libdir}/"
# A plain libonnxruntime.so name for tools that expect it.
main="$(ls -1 "${libdir}"/libonnxruntime.so.* 2>/dev/null | sort | tail -n 1 || true)"
if [[ -n "${main}" ]] && [[ ! -e "${libdir}/libonnxruntime.so" ]]; then
    ln -s "$(basename "${main}")" "${libdir}/libonnxruntime.so"
fi
echo "${want}" > "${stamp}"

lib="${main:-${libdir}/libonnxruntime.so}"
echo "Installed ONNX Runtime ${version} (${flavour}, ${plat_arch}) into ${libdir}"
ls -1 "${libdir}" | sed 's/^/  /'
echo "Library: ${lib}"
if [[ "${libdir}" == "${repo_root}/.ort/lib" ]]; then
    echo "fieldtune finds it automatically from inside ${repo_root}; elsewhere use --ort-lib ${lib} or ORT_DYLIB_PATH=${lib}"
else
    echo "Use it with --ort-lib ${lib} or ORT_DYLIB_PATH=${lib}"
fi
