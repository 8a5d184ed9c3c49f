#!/usr/bin/env bash
# Tests the amd64 fieldtune .deb for real on this machine (root; systemd need not run): builds
# it with cargo-deb from the x86_64 `dist` binary (scripts/ci/ci-deploy.sh builds that binary),
# installs it, checks the user, folders and conffile, `systemd-analyze verify`s the unit, runs
# the unit's ExecStart as the service user with the unit's working directory, environment
# (NOTIFY_SOCKET with a listener that must see READY=1, WATCHDOG=1 and STOPPING=1) and no new
# privileges: the shipped demo, bounded by its stream's end; checks the state and checkpoints
# it wrote; runs the same ExecStart with the config switched to a GStreamer source (300
# videotestsrc frames, each classified: the binary links GStreamer, which the package's Depends
# bring); installs a second version over it (state and last good checkpoint byte-identical,
# a local conffile edit kept); `dpkg -r` keeps state and config; `dpkg -P` removes them and
# the user. Any mismatch fails. Cleans up on exit, so it can run again.
#
# Usage: scripts/ci/test-deb.sh [OUT_DIR]   (default out/deploy; packages are written there)
# Refuses to touch an existing fieldtune install unless CI=true or FIELDTUNE_DEB_TEST_FORCE=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-out/deploy}"
mkdir -p "${out}"
out="$(cd "${out}" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${FIELDTUNE_PKG_CACHE:-/tmp/fieldtune-pkgs}/deploy-target}"
triple=x86_64-unknown-linux-gnu
profile=dist
state=/var/lib/fieldtune
conf=/etc/fieldtune/fieldtune.toml

fail() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
[[ "$(id -u)" == 0 ]] || fail "run as root (dpkg -i, a system user)"
[[ "$(dpkg --print-architecture)" == amd64 ]] || fail "this test installs the amd64 package"
bin="${CARGO_TARGET_DIR}/${triple}/${profile}/fieldtune"
[[ -x "${bin}" ]] || fail "${bin} missing: bash scripts/ci/ci-deploy.sh tools cross"

purge() {
    if dpkg-query -W -f='${Status}' fieldtune 2>/dev/null | grep -q 'installed\|config-files'; then
        dpkg -P fieldtune >/dev/null
    fi
    rm -rf "${state}" /etc/fieldtune
    if getent passwd fieldtune >/dev/null; then userdel fieldtune; fi
    if getent group fieldtune >/dev/null; then groupdel fieldtune; fi
    return 0
}
if dpkg-query -W -f='${Status}' fieldtune 2>/dev/null | grep -q 'installed\|config-files'; then
    [[ "${CI:-}" == true || "${FIELDTUNE_DEB_TEST_FORCE:-}" == 1 ]] \
        || fail "fieldtune is installed here and this test purges it (set FIELDTUNE_DEB_TEST_FORCE=1)"
fi
purge
work=$(mktemp -d)
listener_pid=""
cleanup() {
    [[ -n "${listener_pid}" ]] && kill "${listener_pid}" 2>/dev/null
    purge
    rm -rf "${work}"
}
trap cleanup EXIT

echo "-- build: ${out}/fieldtune_*_amd64.deb and a second version"
t0=$(now)
rm -f "${out}"/fieldtune_*_amd64.deb
rm -rf "${out}/v2"
mkdir -p "${out}/v2"
cargo deb -p fieldtune --target "${triple}" --profile "${profile}" --no-build --no-strip \
    --output "${out}" >/dev/null
deb1=$(ls -1 "${out}"/fieldtune_*_amd64.deb)
v1=$(dpkg-deb -f "${deb1}" Version)
v2="${v1}+test2"
cargo deb -p fieldtune --target "${triple}" --profile "${profile}" --no-build --no-strip \
    --deb-version "${v2}" --output "${out}/v2" >/dev/null
deb2=$(ls -1 "${out}"/v2/fieldtune_*_amd64.deb)
dpkg --compare-versions "${v2}" gt "${v1}" || fail "${v2} is not newer than ${v1}"
dpkg-deb -I "${deb1}"
dpkg-deb -c "${deb1}" > "${work}/contents.txt"
echo "$(basename "${deb1}"): $(grep -c . "${work}/contents.txt") entries, $(du -h "${deb1}" | cut -f1)"
echo "[time] build both packages: $(since "$t0") s"

echo "-- dpkg -i ${v1}"
t0=$(now)
dpkg -i "${deb1}" </dev/null
[[ -x /usr/bin/fieldtune ]] || fail "/usr/bin/fieldtune missing"
[[ -f "${conf}" ]] || fail "${conf} missing"
dpkg-query -W -f='${Conffiles}\n' fieldtune | grep -q " ${conf} " \
    || fail "${conf} is not a conffile"
unit=""
for u in /usr/lib/systemd/system/fieldtune.service /lib/systemd/system/fieldtune.service; do
    [[ -f "$u" ]] && unit="$u" && break
done
[[ -n "${unit}" ]] || fail "the systemd unit is not installed"
uid=$(id -u fieldtune) || fail "no user fieldtune"
[[ "${uid}" -lt 1000 ]] || fail "fieldtune is not a system user (uid ${uid})"
[[ "$(getent passwd fieldtune | cut -d: -f7)" == /usr/sbin/nologin ]] || fail "fieldtune has a login shell"
[[ "$(stat -c '%U:%G %a' "${state}")" == "fieldtune:fieldtune 750" ]] \
    || fail "${state}: $(stat -c '%U:%G %a' "${state}") (want fieldtune:fieldtune 750)"
for f in /usr/share/fieldtune/models/mnist-cnn/model.onnx /usr/share/fieldtune/models/mnist-cnn/model.toml \
    /usr/share/fieldtune/models/mnist-cnn/anchors/7 /usr/share/fieldtune/data/mnist/0 \
    /usr/share/fieldtune/data/opencv-digits/9; do
    [[ -e "$f" ]] || fail "$f missing"
done
echo "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' fieldtune); unit ${unit}"
echo "[time] install: $(since "$t0") s"

echo "-- systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "${unit}" || fail "systemd-analyze verify ${unit}"
    echo "systemd-analyze verify: ok ($(systemd-analyze --version | sed -n 1p))"
    systemd-analyze security --offline=true "${unit}" 2>/dev/null | tail -n 1 || true
else
    echo "systemd-analyze not installed (apt-get install systemd): unit NOT verified"
fi

echo "-- the unit's ExecStart as user fieldtune (shipped demo, to the end of its stream)"
exec_start=$(sed -n 's/^ExecStart=//p' "${unit}")
workdir=$(sed -n 's/^WorkingDirectory=//p' "${unit}")
read -r -a cmd <<< "${exec_start}"
[[ "${cmd[0]}" == /usr/bin/fieldtune ]] || fail "unexpected ExecStart: ${exec_start}"
chmod 755 "${work}"
# Runs ExecStart as the service user, in the unit's working directory, without new privileges,
# beside a notify socket like systemd's (WATCHDOG_USEC 12 s, so a ~40 s demo sees several
# pings); $1 names the run's files in ${work}: $1.log (output), $1.notify (one line per
# message). The service must report READY=1 before STOPPING=1 and exit 0.
service_run() {
    local name=$1 rc run_s t0
    rm -f "${work}/notify"
    python3 - "${work}/notify" "${work}/${name}.notify" <<'PY' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o777)
with open(log, "a") as f:
    while True:
        msg = s.recv(4096).decode()
        f.write(msg.replace("\n", " ") + "\n")
        f.flush()
        if "STOPPING=1" in msg:
            break
PY
    listener_pid=$!
    for _ in $(seq 50); do [[ -S "${work}/notify" ]] && break; sleep 0.1; done
    [[ -S "${work}/notify" ]] || fail "notify listener did not start"
    t0=$(now)
    set +e
    (cd "${workdir}" && timeout 600 setpriv --reuid fieldtune --regid fieldtune --init-groups \
        --no-new-privs env -i PATH=/usr/bin:/bin HOME="${state}" USER=fieldtune LOGNAME=fieldtune \
        NOTIFY_SOCKET="${work}/notify" WATCHDOG_USEC=12000000 "${cmd[@]}") \
        >"${work}/${name}.log" 2>&1
    rc=$?
    set -e
    run_s=$(since "$t0")
    tail -n 25 "${work}/${name}.log"
    [[ ${rc} == 0 ]] || fail "ExecStart (${name}) exited ${rc} (log above)"
    echo "[time] service run, ${name} (ExecStart as fieldtune): ${run_s} s"
    wait "${listener_pid}" 2>/dev/null || true
    listener_pid=""
    local log="${work}/${name}.notify"
    echo "notifications: $(tr '\n' '|' < "${log}")"
    grep -q '^READY=1' "${log}" || fail "${name}: no READY=1"
    grep -q '^STOPPING=1' "${log}" || fail "${name}: no STOPPING=1"
    [[ "$(grep -n '^READY=1' "${log}" | cut -d: -f1)" -lt "$(grep -n '^STOPPING=1' "${log}" | cut -d: -f1)" ]] \
        || fail "${name}: STOPPING=1 before READY=1"
}
service_run demo
[[ $(grep -c '^WATCHDOG=1' "${work}/demo.notify") -ge 2 ]] || fail "fewer than 2 WATCHDOG=1 pings"

echo "-- state written in ${state}"
ls -l "${state}"
for f in source.safetensors last-good.safetensors events.jsonl summary.json; do
    [[ -f "${state}/$f" ]] || fail "${state}/$f missing"
    [[ "$(stat -c %U "${state}/$f")" == fieldtune ]] || fail "${state}/$f not owned by fieldtune"
done
grep -q '"event":"committed"' "${state}/events.jsonl" || fail "no committed round in events.jsonl"
setpriv --reuid fieldtune --regid fieldtune --init-groups \
    /usr/bin/fieldtune run --config "${conf}" --check-state | tee "${work}/check.txt"
grep -q 'last-good.safetensors: ok' "${work}/check.txt" || fail "last-good does not verify"

echo "-- the unit's ExecStart on a GStreamer source (videotestsrc; a camera's config differs only in its pipeline)"
cp -p "${conf}" "${work}/fieldtune.toml.shipped"
cat > "${conf}" <<EOF
model = "/usr/share/fieldtune/models/mnist-cnn"
state_dir = "${state}"
[source]
kind = "gstreamer"
pipeline = "videotestsrc num-buffers=300 pattern=ball ! video/x-raw,width=64,height=48,framerate=30/1 ! videoconvert ! appsink name=sink"
[pipeline]
when_full = "block"
[output]
path = "${state}/gst-predictions.jsonl"
[trigger]
drift = false
manual_signal = false
EOF
service_run gstreamer
grep -q 'serving gstreamer `videotestsrc' "${work}/gstreamer.log" || fail "the service did not serve the GStreamer source"
frames=$(grep -c '"class_id":[0-9]' "${state}/gst-predictions.jsonl" || true)
[[ "${frames}" == 300 ]] || fail "GStreamer source: ${frames} predictions in ${state}/gst-predictions.jsonl, want 300"
echo "GStreamer source through ExecStart: ${frames} videotestsrc frames classified"
cp -p "${work}/fieldtune.toml.shipped" "${conf}"
(cd "${state}" && find . -type f ! -name '*.lock' -print0 | sort -z | xargs -0 sha256sum) > "${work}/state.sha256"
echo "state files: $(wc -l < "${work}/state.sha256")"

echo "-- local conffile edit, then dpkg -i ${v2} over it"
echo "# local edit kept across upgrades (deb test)" >> "${conf}"
t0=$(now)
dpkg -i --force-confdef --force-confold "${deb2}" </dev/null
[[ "$(dpkg-query -W -f='${Version}' fieldtune)" == "${v2}" ]] || fail "upgrade did not install ${v2}"
(cd "${state}" && sha256sum --quiet -c "${work}/state.sha256") || fail "state changed by the upgrade"
grep -q '^# local edit kept across upgrades' "${conf}" || fail "upgrade lost the local conffile edit"
[[ "$(id -u fieldtune)" == "${uid}" ]] || fail "upgrade changed the user"
echo "upgrade: state and last good checkpoint identical (sha256), conffile edit kept"
echo "[time] upgrade: $(since "$t0") s"

echo "-- dpkg -r"
dpkg -r fieldtune </dev/null
[[ ! -e /usr/bin/fieldtune ]] || fail "dpkg -r left /usr/bin/fieldtune"
(cd "${state}" && sha256sum --quiet -c "${work}/state.sha256") || fail "dpkg -r changed the state"
grep -q '^# local edit kept across upgrades' "${conf}" || fail "dpkg -r removed ${conf}"
getent passwd fieldtune >/dev/null || fail "dpkg -r removed the user"
echo "remove: state, config and user kept ($(dpkg-query -W -f='${Status}' fieldtune))"

echo "-- dpkg -P"
dpkg -P fieldtune </dev/null
[[ ! -e "${state}" ]] || fail "dpkg -P left ${state}"
[[ ! -e /etc/fieldtune ]] || fail "dpkg -P left /etc/fieldtune"
! getent passwd fieldtune >/dev/null || fail "dpkg -P left the user"
! getent group fieldtune >/dev/null || fail "dpkg -P left the group"
echo "purge: state, config, user and group removed"
echo "package test: ok"
