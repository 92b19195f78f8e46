#!/usr/bin/env bash
# Installs the real NBD clients and servers the test suite drives (Debian packages):
# qemu-utils (qemu-img, qemu-io, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy, nbdfuse, nbdsh),
# nbdkit, fio (nbd engine), python3-libnbd, fuse3 + e2fsprogs (filesystem on nbdfuse),
# gnutls-bin (psktool), openssl, nbd-client (the kernel's client; its negotiation only: no nbd
# module here), and prometheus for `promtool check metrics`.
# Skips apt entirely when everything is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-img   || need+=(qemu-utils)
have nbdinfo    || need+=(libnbd-bin)
have nbdkit     || need+=(nbdkit)
have fio        || need+=(fio)
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || need+=(python3-libnbd)
have fusermount3 || need+=(fuse3)
have mkfs.ext4  || need+=(e2fsprogs)
have psktool    || need+=(gnutls-bin)
have openssl    || need+=(openssl)
have promtool   || need+=(prometheus)
have losetup    || need+=(mount)
# The kernel's NBD client; in /usr/sbin, which a non-root PATH may lack.
[ -x /usr/sbin/nbd-client ] || have nbd-client || need+=(nbd-client)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-test-tools: all test tools present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-test-tools: installing ${need[*]}"
# Packages with services (prometheus) must not try to start them in containers and CI.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-test-tools: done"
