#!/usr/bin/env bash
# Build localhost/osteo-base:bookworm, a stand-in for python:3.11-slim-bookworm made from Debian
# packages alone, for machines that reach deb.debian.org but no container registry.
# Debian bookworm's python3 is 3.11, the version the project pins (requires-python >=3.11,<3.12).
# Usage: docker/base-image.sh [IMAGE]   (root; needs debootstrap and podman)
set -euo pipefail
IMAGE=${1:-localhost/osteo-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman}
if $PODMAN image exists "$IMAGE"; then echo "base-image: $IMAGE exists, keeping it"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "base-image: debootstrap needs root" >&2; exit 1; }
ROOTFS=$(mktemp -d /var/tmp/osteo-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
# passwd: useradd for the non-root user; python3-venv: the image installs into /opt/venv, as
# Debian's pip refuses the system interpreter (PEP 668); curl: the serving image's health check.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd,libstdc++6,libgomp1,curl \
  bookworm "$ROOTFS" "$MIRROR"
# The host's extra CA certificates (a site's TLS-inspecting egress proxy) so that pip can reach
# PyPI from inside a build; outside such a site the folder is empty and this copies nothing.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS/etc/resolv.conf"
tar --numeric-owner -C "$ROOTFS" -c . | $PODMAN import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$IMAGE"
echo "base-image: built $IMAGE"
