#!/usr/bin/env bash
# Builds the "instance" image for tests/e2e/test_instance_boot.py: a machine that
# looks like the Amazon Linux 2023 AMI the Terraform module boots, as far as the
# module's user data can tell. Nothing is pulled from a registry: debootstrap
# (Debian bookworm, --variant=minbase) + docker import, as docker/base.sh does.
#
#   tests/instance/build.sh          # prints the tag, e.g. bastion-instance:3f2a9c0d41be
#
# The tag is a hash of this directory (this script, requirements.txt, rootfs/):
# an existing image with that tag is reused (FORCE=1 rebuilds it). The first
# build takes a few minutes (debootstrap, then the AWS CLI from PyPI).
# Needs root, debootstrap, a Debian mirror (MIRROR, default deb.debian.org) and
# PyPI (through pip's own configuration) for the AWS CLI.
#
# What the image has, as AL2023 has it:
#   - systemd as PID 1 (run it with /sbin/init), dbus;
#   - an OpenSSH server as sshd.service (AL2023's unit name; Debian's ssh.service
#     and ssh.socket are removed), enabled, listening on port 22, host keys made
#     at first boot;
#   - curl, ca-certificates, iproute2 (ss, ip), procps, util-linux (logger,
#     nsenter), ssh-keygen and the OpenSSH client, coreutils (sha256sum);
#   - the AWS CLI: v1 from PyPI (requirements.txt) in a venv under /opt/awscli,
#     run by /usr/local/bin/aws (rootfs/), which also takes the region from
#     AWS_REGION as AL2023's v2 does (v1 reads only AWS_DEFAULT_REGION). Both
#     take the commands the user data uses, and both honour AWS_ENDPOINT_URL.
#
# THE ONE DEVIATION FROM A REAL INSTANCE: rootfs/etc/systemd/system.conf.d/
# 50-aws-endpoint.conf sets systemd's DefaultEnvironment to
# AWS_ENDPOINT_URL=http://127.0.0.1:5000, so that every process systemd starts
# (bastion.service, the drain watcher, the user data run with systemd-run as
# cloud-init would run it) sends its AWS calls to the emulated AWS endpoint: a
# fault proxy in front of moto_server that the test runs inside the machine's
# network namespace. Why: a real instance reaches the real AWS endpoints through
# DNS and the network; here there is no network (the container runs with
# --network none) and nothing may be sent anywhere but loopback. Nothing else
# AWS-related is configured: no credentials (they come from the instance
# metadata service's iam/security-credentials, as on an instance with a role),
# no region (the metadata service's placement/region, or AWS_REGION as the user
# data sets it), no ~/.aws files. The metadata service itself is an emulator the
# test serves on 169.254.169.254:80 in the same network namespace, as the real
# one is reached from an instance.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-python3}

# The inputs, hashed: paths and contents of every file here.
hash=$(cd "$here" && find . -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum | sha256sum | cut -c1-12)
tag=bastion-instance:$hash

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d /var/tmp/bastion-instance.XXXXXX)
cleanup() {
  for m in "$root/proc" "$root/dev/pts" "$root/dev" "$root/sys"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$root" "$root.log"
}
trap cleanup EXIT

packages=systemd,systemd-sysv,dbus,openssh-server,openssh-client,curl,ca-certificates,iproute2,procps,util-linux,python3,python3-venv,less
echo "build.sh: debootstrap $suite from $mirror" >&2
t0=$(date +%s)
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
  { tail -30 "$root.log" >&2; echo "build.sh: debootstrap failed" >&2; exit 1; }
echo "build.sh: debootstrap took $(($(date +%s) - t0)) s" >&2

# The AWS CLI: wheels fetched here with pip (its configuration, its index), for
# the image's Python (bookworm: CPython 3.11, x86_64 glibc), installed offline.
pyver=$(chroot "$root" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
mkdir -p "$root/tmp/wheels"
"$python" -m pip download --quiet --dest "$root/tmp/wheels" --only-binary=:all: \
  --python-version "$pyver" --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -r "$here/requirements.txt" >&2
cp "$here/requirements.txt" "$root/tmp/requirements.txt"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
chroot "$root" /bin/sh -euc '
  python3 -m venv /opt/awscli
  /opt/awscli/bin/pip install --quiet --no-index --find-links /tmp/wheels -r /tmp/requirements.txt
  /opt/awscli/bin/aws --version
' >&2
umount "$root/dev" "$root/proc"
rm -rf "$root/tmp/wheels" "$root/tmp/requirements.txt"

# sshd as AL2023 has it: the unit sshd.service (rootfs/), enabled, and no other;
# not Debian's ssh.service/ssh.socket (removed, with their enablement and the
# sshd.service alias).
rm -f "$root"/etc/systemd/system/sshd.service "$root"/etc/systemd/system/*.wants/ssh.service \
  "$root"/etc/systemd/system/*.wants/ssh.socket \
  "$root"/lib/systemd/system/ssh.service "$root"/lib/systemd/system/ssh.socket "$root"/lib/systemd/system/ssh@.service
# Debian's SysV script too: systemd-sysv-generator would make an ssh.service of it.
rm -f "$root"/etc/init.d/ssh "$root"/etc/rc?.d/[SK][0-9][0-9]ssh
rm -f "$root"/etc/ssh/ssh_host_*

# The files of rootfs/ (the sshd unit, the endpoint drop-in, the aws wrapper).
cp -a "$here/rootfs/." "$root/"
chroot "$root" systemctl enable sshd.service >&2
# What has no meaning in a container (no consoles, no kernel modules, no udev).
chroot "$root" systemctl mask getty@tty1.service console-getty.service serial-getty@.service \
  systemd-udevd.service systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
  sys-kernel-tracing.mount dev-hugepages.mount systemd-remount-fs.service systemd-firstboot.service \
  >/dev/null 2>&1 || true
# A fresh machine id at first boot, as on a new instance.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# cloud-init's place for the user data (the test copies the rendered script there).
mkdir -p "$root/var/lib/cloud"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*

tar -C "$root" --numeric-owner -c . |
  docker import -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' - "$tag" >/dev/null
# Older builds (other inputs) are of no further use.
docker image ls --format '{{.Repository}}:{{.Tag}}' bastion-instance | grep -vx "$tag" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "build.sh: built $tag in $(($(date +%s) - t0)) s ($(du -sh "$root" | cut -f1) unpacked)" >&2
echo "$tag"
