#!/usr/bin/env bash
# Install the Debian packages the container smoke test needs (podman as root, vfs storage, runc) and
# nothing else. Idempotent: packages already present are left alone.
#
#   sudo scripts/install_container_tools.sh
#
# podman        builds and runs the images (daemonless, no Docker engine needed); pulls in conmon,
#               containers-common, CNI plugins and iptables as hard dependencies
# runc          the OCI runtime the smoke test selects (--runtime runc)
# debootstrap   makes the Debian root file system the local base image is imported from
# Not needed (root, vfs storage, host/none networking): uidmap, fuse-overlayfs, slirp4netns.
set -euo pipefail

packages=(podman runc debootstrap)

if [[ ${EUID} -ne 0 ]]; then
    echo "install_container_tools.sh: run as root (apt-get needs it)" >&2
    exit 3
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("${pkg}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "container tools already installed: ${packages[*]}" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "installed: ${missing[*]}" >&2
