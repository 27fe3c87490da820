#!/usr/bin/env bash
# Builds a minimal Debian base image locally, for machines that cannot pull
# from a registry: debootstrap --variant=minbase + docker import. Where a
# registry is reachable, use debian:bookworm-slim instead (the Dockerfile's
# default BASE) and skip this.
#
#   docker/base.sh [TAG]     # default bastion-base:bookworm; kept if it exists (FORCE=1 rebuilds)
#
# Needs root, debootstrap and a Debian mirror (MIRROR, default deb.debian.org).
set -euo pipefail

tag=${1:-bastion-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base.sh: $tag exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d /var/tmp/bastion-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base.sh: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; echo "base.sh: debootstrap failed" >&2; exit 1; }
rm -f "$root.log"
# What debian:*-slim leaves out: package caches and lists, documentation.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "base.sh: built $tag ($(du -sh "$root" | cut -f1) unpacked)"
