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

# Prepare a Debian/Ubuntu host for snapdriver's functional tests:
#
#  1. install the [platform:dpkg] packages of bindep.txt that are missing
#     (apt-get update runs only when something must be installed);
#  2. make sure virtlogd and libvirtd run (systemctl under systemd, else
#     the daemons are started directly, under tools/reaper.py);
#  3. wait until qemu:///system answers, and report whether /dev/kvm is
#     usable (domains fall back to TCG without it).
#
# Safe to run any number of times. Uses sudo when not run as root.
#
# Options:
#   --profile NAME         also install the bindep lines of that profile
#                          (repeatable; "box": rabbitmq-server for the
#                          compute host in a box). Lines with a profile are
#                          skipped otherwise, as bindep does.
#
# Environment:
#   BINDEP_FILE            bindep file to read (default: <repo>/bindep.txt)
#   SETUP_HOST_TIMEOUT     seconds to wait for libvirt (default: 30)

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BINDEP_FILE=${BINDEP_FILE:-$REPO_ROOT/bindep.txt}
TIMEOUT=${SETUP_HOST_TIMEOUT:-30}
PROFILES=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILES="$PROFILES $2"; shift 2 ;;
        --profile=*) PROFILES="$PROFILES ${1#--profile=}"; shift ;;
        *) echo "setup-host: unknown argument $1" >&2; exit 2 ;;
    esac
done
LIBVIRT_URI=qemu:///system

say() {
    echo "setup-host: $*"
}

die() {
    echo "setup-host: ERROR: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "not root and sudo is not installed"
fi

# Packages for dpkg platforms: lines without a selector apply everywhere,
# lines with one only when it names platform:dpkg (or no platform), and
# lines naming profiles only when one of them was asked for (--profile).
# The first word of a line is the package name.
dpkg_packages() {
    awk -v profiles="$PROFILES" '
        BEGIN { n = split(profiles, p, " "); for (i = 1; i <= n; i++) want[p[i]] = 1 }
        /^[[:space:]]*(#|$)/ { next }
        {
            if (index($0, "[") == 0) { print $1; next }
            sel = $0; sub(/^[^[]*\[/, "", sel); sub(/\].*$/, "", sel)
            k = split(sel, tok, " ")
            plat = 0; platok = 0; prof = 0; profok = 0
            for (i = 1; i <= k; i++) {
                if (tok[i] ~ /^platform:/) {
                    plat = 1; if (tok[i] == "platform:dpkg") platok = 1
                } else {
                    prof = 1; if (tok[i] in want) profok = 1
                }
            }
            if ((!plat || platok) && (!prof || profok)) print $1
        }
    ' "$BINDEP_FILE"
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = \
        "install ok installed" ]
}

install_packages() {
    [ -r "$BINDEP_FILE" ] || die "cannot read $BINDEP_FILE"
    command -v dpkg-query >/dev/null 2>&1 ||
        die "dpkg-query not found: only Debian/Ubuntu hosts are supported"

    local wanted missing=() pkg
    wanted=$(dpkg_packages)
    [ -n "$wanted" ] || die "no [platform:dpkg] package in $BINDEP_FILE"
    for pkg in $wanted; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "all packages of $(basename "$BINDEP_FILE") already installed:" \
            $wanted
        return
    fi

    say "installing ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "$pkg is still not installed"
        say "installed $pkg"
    done
}

start_daemon() {
    local daemon=$1
    command -v "$daemon" >/dev/null 2>&1 ||
        [ -x "/usr/sbin/$daemon" ] ||
        die "$daemon not found (is libvirt-daemon-system installed?)"

    if [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet "$daemon"; then
            say "$daemon already running"
            return
        fi
        "${SUDO[@]}" systemctl start "$daemon" ||
            die "systemctl start $daemon failed"
        say "started $daemon (systemd)"
        return
    fi

    if pgrep -x "$daemon" >/dev/null; then
        say "$daemon already running"
        return
    fi
    # No init system to start it: run the daemon directly. libvirtd needs
    # virtlogd, else starting a domain fails with "Failed to connect
    # socket to '/run/libvirt/virtlogd-sock'". Under tools/reaper.py: the
    # QEMU processes libvirtd starts are reaped as soon as they exit, as
    # under systemd (PID 1 of a container may reap them seconds later, and
    # libvirt waits for that at every managed save and shutdown).
    PATH=$PATH:/usr/sbin:/sbin "${SUDO[@]}" python3 \
        "$REPO_ROOT/tools/reaper.py" "$daemon" -d ||
        die "$daemon -d failed"
    say "started $daemon (its orphans reaped by tools/reaper.py)"
}

wait_for_libvirt() {
    local deadline=$((SECONDS + TIMEOUT)) out
    until out=$(virsh -c "$LIBVIRT_URI" version 2>&1); do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "$LIBVIRT_URI did not answer within ${TIMEOUT}s: $out"
        fi
        sleep 1
    done
    # "Using library: libvirt 9.0.0" / "Running hypervisor: QEMU 7.2.x"
    say "libvirt ready: $(echo "$out" | awk -F': ' '
        /^Using library:/ { lib = $2 }
        /^Running hypervisor:/ { hv = $2 }
        END { print lib ", " hv }')"
}

report_kvm() {
    if [ ! -e /dev/kvm ]; then
        say "/dev/kvm missing: domains will run under TCG (type=qemu, slow)"
    elif (exec 3<>/dev/kvm) 2>/dev/null; then
        say "/dev/kvm usable: domains will run with type=kvm"
    else
        say "/dev/kvm present but not usable by $(id -un):" \
            "domains will run under TCG (type=qemu, slow)"
    fi
}

install_packages
start_daemon virtlogd
start_daemon libvirtd
wait_for_libvirt
report_kvm
