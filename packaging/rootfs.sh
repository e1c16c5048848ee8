#!/bin/sh
# Assembles the container's runtime file system (the whole `scratch` image) around a static
# itsur binary. Used by packaging/Dockerfile and by packaging/tests/image.sh, which runs the
# result under chroot as uid 10001 — so what the image holds is exercised without Docker.
#
#   packaging/rootfs.sh BINARY DEST [CA_BUNDLE]
#
# DEST gets: /itsur, the CA bundle (rustls reads it through SSL_CERT_FILE), /etc/passwd and
# /etc/group with the unprivileged user 10001, /etc/nsswitch.conf (glibc's built-in files and
# dns NSS modules: host names resolve from scratch), and a sticky /tmp.
set -eu
bin="${1:?usage: rootfs.sh BINARY DEST [CA_BUNDLE]}"
dest="${2:?usage: rootfs.sh BINARY DEST [CA_BUNDLE]}"
ca="${3:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] || {
    echo "rootfs.sh: no CA bundle at $ca (Debian package ca-certificates)" >&2
    exit 1
}
mkdir -p "$dest/etc/ssl/certs" "$dest/tmp"
chmod 1777 "$dest/tmp"
cp "$ca" "$dest/etc/ssl/certs/ca-certificates.crt"
echo 'itsur:x:10001:10001:itsur:/nonexistent:/sbin/nologin' >"$dest/etc/passwd"
echo 'itsur:x:10001:' >"$dest/etc/group"
printf 'hosts: files dns\n' >"$dest/etc/nsswitch.conf"
install -m 0755 "$bin" "$dest/itsur"
