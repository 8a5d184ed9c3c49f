#!/usr/bin/env bash
# What `scripts/test.sh` can test on this machine. Prints on stderr one line per optional feature
# (on or OFF, and why) and one per missing required package (README.md "Two commands" lists them
# all), and on stdout the `--features` list for cargo. Optional: GStreamer sources (feature
# `gstreamer`) need the GStreamer development packages, found with pkg-config; board LEDs on the
# GPIO character device (`linux-gpio`) need no system library and are always on.
set -euo pipefail
features=fieldtune/linux-gpio
if pkg-config --exists gstreamer-app-1.0 gstreamer-video-1.0 2>/dev/null; then
  features=fieldtune/gstreamer,$features
  echo "feature gstreamer: on (GStreamer development packages found by pkg-config)" >&2
else
  echo "feature gstreamer: OFF (pkg-config finds no gstreamer-app-1.0/gstreamer-video-1.0; to test the GStreamer sources: apt-get install pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base gstreamer1.0-plugins-good)" >&2
fi
echo "feature linux-gpio: on (no system library needed)" >&2
# Required: the tests that need these fail without them.
for m in torch:python3-torch torchvision:python3-torchvision numpy:python3-numpy onnx:python3-onnx PIL:python3-pil; do
  /usr/bin/python3 -c "import ${m%%:*}" 2>/dev/null ||
    echo "missing: ${m#*:} (Python module ${m%%:*} for /usr/bin/python3): the PyTorch reference tests will fail" >&2
done
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -n "${FIELDTUNE_FONT:-}" ] ||
  echo "missing: fonts-dejavu-core: the report tests will fail (or set FIELDTUNE_FONT)" >&2
echo "$features"
