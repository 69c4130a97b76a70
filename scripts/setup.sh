#!/usr/bin/env sh
# Makes sure a Vulkan driver is present, installing Mesa's software adapter (lavapipe) on
# Debian or Ubuntu when none is. Works as root without sudo and as a user with sudo.
set -eu
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no Vulkan driver found; install your GPU's Vulkan driver or Mesa's lavapipe" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "setup: installing mesa-vulkan-drivers needs root: run this as root or install sudo" >&2
    exit 1
fi
echo "setup: no Vulkan driver found, installing Mesa's (lavapipe)"
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq
$as_root apt-get install -y -qq mesa-vulkan-drivers >/dev/null
