#!/usr/bin/env bash
# Runs boards/linux's gpio-sim test where the host kernel cannot (no gpio-sim, no configfs, not
# root): builds a minimal Linux 6.1 (Debian's linux-source-6.1) with CONFIG_GPIO_SIM and
# CONFIG_CONFIGFS_FS, boots it in QEMU with an initramfs holding busybox and the test binary, and
# reports the test's result. Debian 12's stock kernel has no gpio-sim, hence the build (about
# 5 minutes on 2 cores).
# Needs apt (qemu-system-x86, flex, bison, bc, libelf-dev, gcc, make) and ~1.5 GB in $WORK.
# Not part of ci-boards.sh: run it by hand, then note the date and kernel in boards/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
WORK=${WORK:-$repo/target/gpio-sim-qemu}
mkdir -p "$WORK"

need=()
for p in qemu-system-x86 flex bison bc libelf-dev gcc make; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cd "$WORK"
if [ ! -x bb/bin/busybox ]; then
  apt-get download busybox-static
  dpkg-deb -x busybox-static_*.deb bb
fi
if [ ! -d linux ]; then
  apt-get download linux-source-6.1
  dpkg-deb -x linux-source-6.1_*.deb src
  tar xf src/usr/src/linux-source-6.1.tar.xz
  mv linux-source-6.1 linux
  rm -rf src
fi
kernel=linux/arch/x86/boot/bzImage
if [ ! -f "$kernel" ]; then
  echo "== building a minimal kernel with gpio-sim"
  cat > extra.config <<'CFG'
CONFIG_64BIT=y
CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_DEVTMPFS=y
CONFIG_CONFIGFS_FS=y
CONFIG_GPIOLIB=y
CONFIG_GPIO_CDEV=y
CONFIG_GPIO_CDEV_V1=y
CONFIG_GPIO_SIM=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_SHMEM=y
CONFIG_TMPFS=y
CONFIG_MULTIUSER=y
CONFIG_POSIX_TIMERS=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_UNIX=y
CONFIG_NET=y
CFG
  (cd linux && make -s tinyconfig && ./scripts/kconfig/merge_config.sh -m .config ../extra.config >/dev/null \
    && make -s olddefconfig && grep -q '^CONFIG_GPIO_SIM=y' .config \
    && nice -n 19 make -s -j"$(nproc)" bzImage)
fi

echo "== test binary"
bin=$(cd "$repo" && cargo test -p fieldtune-board-linux --features linux-gpio --test gpio_sim --no-run 2>&1 \
  | grep -o 'target/[^ )]*/deps/gpio_sim-[0-9a-f]*' | tail -1)
[ -n "$bin" ] || { echo "could not build the gpio_sim test binary" >&2; exit 1; }

rm -rf root && mkdir -p root/bin root/proc root/sys root/dev
cp bb/bin/busybox root/bin/
for a in sh mount cat echo; do ln -s busybox "root/bin/$a"; done
cp "$repo/$bin" root/bin/gpio_sim
# The test binary's shared libraries, at the paths the dynamic loader expects.
for lib in $(ldd "$repo/$bin" | grep -o '/[^ ]*'); do
  mkdir -p "root$(dirname "$lib")"
  cp -L "$lib" "root$lib"
done
cat > root/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t configfs none /sys/kernel/config
echo "kernel: $(cat /proc/version)"
/bin/gpio_sim --nocapture
echo "gpio_sim exit status: $?"
# init exiting panics the kernel; with panic=-1 and -no-reboot QEMU then exits.
INIT
chmod +x root/init
(cd root && find . | ../bb/bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)

echo "== booting (plain emulation: the tiny kernel boots in seconds)"
set +e
timeout 600 qemu-system-x86_64 -m 512 -smp 1 -kernel "$kernel" -initrd initrd.gz \
  -append "console=ttyS0 panic=-1 quiet" -nographic -no-reboot > qemu.log 2>&1
set -e
tr -d '\r' < qemu.log | grep -aoE 'kernel: Linux version [^ ]+|gpio-sim.*|^test .*|.*panicked.*|^  (left|right).*|gpio_sim exit status: [0-9]+' || true
if grep -q 'gpio_sim exit status: 0' qemu.log && ! grep -q 'DID NOT RUN' qemu.log; then
  echo "gpio-sim test passed under QEMU (log: $WORK/qemu.log)"
else
  echo "gpio-sim test failed or did not run under QEMU (log: $WORK/qemu.log)" >&2
  exit 1
fi
