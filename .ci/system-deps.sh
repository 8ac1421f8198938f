#!/usr/bin/env bash
# Debian packages the tests and the demo need: ffmpeg (test media, decode reference) and GStreamer's
# RTSP server with python3-gi (the real RTSP server the tests start); nats-server (JetStream, the cluster tests); chromium and chromium-driver (the live view's browser tests).  Installs only what is missing.
set -euo pipefail
PKGS=(ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
      gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
      nats-server chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
