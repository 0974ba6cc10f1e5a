#!/bin/bash
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

# Build the snapdriver test guest from Debian packages: a kernel (vmlinuz)
# and an initramfs (initrd.img) for libvirt direct kernel boot.  The
# initramfs holds static busybox, /init
# (snapdriver/tests/functional/guest/init), the sequential writer
# (snapdriver/tests/functional/guest/writer.c, built with gcc -static),
# qemu-ga with the shared libraries ldd lists, and the virtio modules the
# kernel does not have built in.
#
# Idempotent and cached: the output is rebuilt only when the stamp (a hash
# of this script, init, writer.c and the versions of the packages used)
# changes.  Run as root (it installs missing packages with apt-get).
#
# Environment:
#   SNAPDRIVER_GUEST_CACHE   output dir (default /var/cache/snapdriver/
#                            test-guest); must be readable by the user QEMU
#                            runs as (libvirt-qemu)
#   SNAPDRIVER_GUEST_KERNEL  kernel flavour: cloud (default: smaller, virtio
#                            and ext4 enough) or generic (linux-image-amd64)
#   SNAPDRIVER_GUEST_FORCE   1: rebuild even if the stamp matches
#   SNAPDRIVER_GUEST_REFRESH 1: ask apt for the newest kernel package of
#                            the flavour (otherwise the one downloaded
#                            before is kept, and a cached run needs no apt)
#
# Prints the paths as its last two lines: "kernel=PATH" and "initrd=PATH".

set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
guest_src=$top/snapdriver/tests/functional/guest
cache=${SNAPDRIVER_GUEST_CACHE:-/var/cache/snapdriver/test-guest}
flavour=${SNAPDRIVER_GUEST_KERNEL:-cloud}
# virtio_pci: the bus; virtio_blk: vda/vdb; virtio_console: the agent port.
# ext4 (the freezable filesystem) is built into Debian's kernels; it is
# added here too so that a modular build would still get it.
modules="virtio_pci virtio_blk virtio_console ext4"
t0=$(date +%s.%N)

say() {
    echo "build-test-guest: $*"
}

die() {
    echo "build-test-guest: ERROR: $*" >&2
    exit 1
}

case "$flavour" in
    cloud) kmeta=linux-image-cloud-amd64 ;;
    generic) kmeta=linux-image-amd64 ;;
    *) die "SNAPDRIVER_GUEST_KERNEL must be cloud or generic" ;;
esac
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
[ "$(id -u)" = 0 ] || die "run as root (installs packages, writes $cache)"
for f in "$guest_src/init" "$guest_src/writer.c"; do
    [ -f "$f" ] || die "missing $f"
done

mkdir -p "$cache"
chmod 0755 "$cache"
# QEMU (user libvirt-qemu) reads vmlinuz and initrd.img from here.
d=$(cd "$cache" && pwd)
while [ "$d" != / ]; do
    if [ -z "$(find "$d" -maxdepth 0 -perm -o+x)" ]; then
        say "WARNING: $d is not traversable by others: QEMU cannot read" \
            "the guest files (choose another SNAPDRIVER_GUEST_CACHE)"
    fi
    d=$(dirname "$d")
done
# One build at a time (parallel test workers share the cache).
exec 9>"$cache/.lock"
flock 9

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
}

installed_version() {
    dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null |
        awk '$1 == "installed" { print $2 }'
}

# Host tools (packages whose files are used on the host or copied).
host_pkgs="busybox-static qemu-guest-agent gcc libc6-dev cpio kmod gzip"
missing=
for p in $host_pkgs; do
    [ -n "$(installed_version "$p")" ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing:$missing"
    # shellcheck disable=SC2086  # $missing is a list of package names
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends $missing >/dev/null; then
        apt_update_once
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends $missing >/dev/null
    fi
fi

# The kernel: the package the metapackage points at.  Only downloaded and
# unpacked into the cache, never installed: installing would pull
# initramfs-tools and build an initramfs for the host for nothing.
kernel_pkg() {
    apt-cache depends "$kmeta" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
debs=$cache/debs/$flavour
mkdir -p "$debs"
cached_deb() {
    ls "$debs/"linux-image-*_amd64.deb 2>/dev/null | head -n1 || true
}
deb=$(cached_deb)
if [ -n "$deb" ] && [ "${SNAPDRIVER_GUEST_REFRESH:-0}" != 1 ]; then
    # Pinned to the kernel package downloaded before: no apt look-up.
    kpkg=$(dpkg-deb -f "$deb" Package)
    kver_pkg=$(dpkg-deb -f "$deb" Version)
else
    kpkg=$(kernel_pkg)
    if [ -z "$kpkg" ]; then
        apt_update_once
        kpkg=$(kernel_pkg)
    fi
    [ -n "$kpkg" ] || die "no candidate for $kmeta (apt sources?)"
    kver_pkg=$(apt-cache policy "$kpkg" |
               awk '$1 == "Candidate:" { print $2 }')
    [ -n "$kver_pkg" ] && [ "$kver_pkg" != "(none)" ] ||
        die "no candidate version for $kpkg"
fi
kver=${kpkg#linux-image-}

versions="$kpkg=$kver_pkg"
for p in $host_pkgs libc6 libglib2.0-0 libudev1 libnuma1 liburing2; do
    versions="$versions $p=$(installed_version "$p")"
done
stamp=$( (cat "${BASH_SOURCE[0]}" "$guest_src/init" "$guest_src/writer.c";
          echo "$versions $modules") | sha256sum | cut -d' ' -f1)

if [ "${SNAPDRIVER_GUEST_FORCE:-0}" != 1 ] &&
        [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.img" ] &&
        [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
    say "up to date in $cache (kernel $kver, stamp ${stamp:0:12})"
    echo "kernel=$cache/vmlinuz"
    echo "initrd=$cache/initrd.img"
    exit 0
fi

work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Download the kernel package (kept for rebuilds of the same version).
if [ -z "$deb" ] || [ "$(dpkg-deb -f "$deb" Package)" != "$kpkg" ] ||
        [ "$(dpkg-deb -f "$deb" Version)" != "$kver_pkg" ]; then
    say "downloading $kpkg $kver_pkg"
    # apt-get download writes to the current directory; as root it warns
    # that _apt cannot write there, which is harmless: filtered out.
    for try in 1 2; do
        (cd "$work" && apt-get download -qq "$kpkg=$kver_pkg" 2>&1 |
             grep -v 'unsandboxed' >&2 || true)
        deb=$(ls "$work/${kpkg}_"*"_amd64.deb" 2>/dev/null | head -n1 ||
              true)
        [ -z "$deb" ] && [ "$try" = 1 ] && apt_update_once
        [ -n "$deb" ] && break
    done
    [ -n "$deb" ] || die "could not download $kpkg=$kver_pkg"
    rm -f "$debs/"*.deb
    mv "$deb" "$debs/"
    deb=$debs/$(basename "$deb")
else
    say "using cached $(basename "$deb")"
fi

say "unpacking $kpkg"
kroot=$work/kernel
mkdir -p "$kroot"
dpkg-deb --fsys-tarfile "$deb" |
    tar -x -C "$kroot" --wildcards './boot/vmlinuz-*' './lib/modules/*'
[ -f "$kroot/boot/vmlinuz-$kver" ] || die "no vmlinuz-$kver in $deb"
depmod -b "$kroot" "$kver"

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc,lib,lib64,usr/sbin}
mkdir -p "$root/var"
ln -s ../run "$root/var/run"

# Kernel modules not built in, with their dependencies, in load order.
: > "$root/lib/modules.load.tmp"
for m in $modules; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$m" ||
        die "module $m not found for $kver"
done | while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    rel=${path#"$kroot"/lib/modules/}
    if ! grep -qxF "$rel" "$root/lib/modules.load.tmp"; then
        echo "$rel" >> "$root/lib/modules.load.tmp"
    fi
done
mkdir -p "$root/lib/modules"
while read -r rel; do
    mkdir -p "$root/lib/modules/$(dirname "$rel")"
    case "$rel" in
        *.ko.xz) xz -dc "$kroot/lib/modules/$rel" \
                     > "$root/lib/modules/${rel%.xz}"; rel=${rel%.xz} ;;
        *.ko.zst) zstd -qdc "$kroot/lib/modules/$rel" \
                      > "$root/lib/modules/${rel%.zst}"; rel=${rel%.zst} ;;
        *.ko.gz) gzip -dc "$kroot/lib/modules/$rel" \
                     > "$root/lib/modules/${rel%.gz}"; rel=${rel%.gz} ;;
        *) cp "$kroot/lib/modules/$rel" "$root/lib/modules/$rel" ;;
    esac
    echo "$rel" >> "$root/lib/modules/load.list"
done < "$root/lib/modules.load.tmp"
rm -f "$root/lib/modules.load.tmp"
touch "$root/lib/modules/load.list"
nmods=$(wc -l < "$root/lib/modules/load.list")

# Busybox (static) and its applets.
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    case "$applet" in
        busybox|init|linuxrc) ;;
        *) ln -s busybox "$root/bin/$applet" ;;
    esac
done

# The writer.
gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/writer" \
    "$guest_src/writer.c"
strip "$root/bin/writer"

# qemu-ga and every shared object ldd lists, the dynamic loader included,
# at the same paths as on the host (the loader path is baked in).
qga=/usr/sbin/qemu-ga
cp "$qga" "$root/usr/sbin/qemu-ga"
nlibs=0
for lib in $(ldd "$qga" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    nlibs=$((nlibs + 1))
done
mkdir -p "$root/etc/qemu"

# /init.
install -m 0755 "$guest_src/init" "$root/init"
cat > "$root/etc/snapguest-build" <<EOF
kernel=$kver
versions=$versions
stamp=$stamp
EOF

say "packing initramfs ($nmods modules, qemu-ga + $nlibs libraries)"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
     cpio --null -o -H newc --owner=0:0 --reproducible --quiet) |
    gzip -6n > "$work/initrd.img"
cp "$kroot/boot/vmlinuz-$kver" "$work/vmlinuz"
chmod 0644 "$work/initrd.img" "$work/vmlinuz"

# Publish: files first, stamp last.
rm -f "$cache/stamp"
mv -f "$work/vmlinuz" "$cache/vmlinuz"
mv -f "$work/initrd.img" "$cache/initrd.img"
echo "$stamp" > "$cache/stamp.tmp"
mv -f "$cache/stamp.tmp" "$cache/stamp"
cp "$root/etc/snapguest-build" "$cache/build-info"
chmod 0644 "$cache/stamp" "$cache/build-info"

t1=$(date +%s.%N)
say "built kernel $kver + initrd ($(du -k "$cache/initrd.img" | cut -f1)" \
    "KiB) in $cache in $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s"
echo "kernel=$cache/vmlinuz"
echo "initrd=$cache/initrd.img"
