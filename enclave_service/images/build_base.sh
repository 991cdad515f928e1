#!/bin/sh
# Build the enclave's R base image without any registry:
#   debootstrap (minbase) -> apt-get install R inside a chroot -> podman import.
# Usage: build_base.sh TAG [MIRROR] [SUITE] [PACKAGES...]
# The image holds no secret: only Debian packages and an unprivileged user
# `editor` (uid/gid 1010) whose home is where the analysis is mounted.
set -eu

TAG=$1
MIRROR=${2:-http://deb.debian.org/debian}
SUITE=${3:-bookworm}
shift $(( $# < 3 ? $# : 3 ))
PACKAGES=${*:-r-base-core}
RUNTIME=${KINETIC_PODMAN_RUNTIME:-runc}

work=$(mktemp -d /var/tmp/kinetic-base.XXXXXX)
root="$work/rootfs"
cleanup() {
    # Unmount before removing: rm -rf through a live /proc bind would be a disaster.
    for m in proc dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT INT TERM

echo "[base] debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

echo "[base] apt-get install $PACKAGES"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 sh -ec "
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /var/cache/debconf/*-old
"
umount -l "$root/proc"; umount -l "$root/dev"

# The unprivileged user every run uses (same uid/gid as in the workspaces).
echo 'editor:x:1010:1010:Kinetic editor:/home/editor:/bin/bash' >>"$root/etc/passwd"
echo 'editor:x:1010:' >>"$root/etc/group"
echo 'editor:*:19000:0:99999:7:::' >>"$root/etc/shadow"
mkdir -p "$root/home/editor/kinetic"
chown -R 1010:1010 "$root/home/editor"
: >"$root/etc/resolv.conf"   # runs have no network; keep no host resolver config

echo "[base] podman import -> $TAG"
tar -C "$root" --numeric-owner -cf - . | podman --runtime "$RUNTIME" import \
    --change 'USER 1010:1010' \
    --change 'ENV HOME=/home/editor' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /home/editor/kinetic' \
    --change 'LABEL org.kinetic.image=r-base' \
    --change 'CMD ["R", "--version"]' \
    - "$TAG" >/dev/null
echo "[base] done $TAG"
