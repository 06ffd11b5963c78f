#!/bin/sh
# kennel: the rootless half of engine-entrypoint.sh, run as the sandbox's uid. rootlesskit makes
# the user namespace (newuidmap/newgidmap from /etc/subuid) and a network namespace whose only
# way out is slirp4netns in the engine container's own network namespace (which reaches nothing
# but the `dind` profile's proxy). The socket in the shared volume is owned by the engine's root,
# i.e. the sandbox user on the host.
set -eu
export HOME=/home/kennel
export XDG_RUNTIME_DIR=/home/kennel/run
export TMPDIR=/home/kennel/tmp
mkdir -p "$XDG_RUNTIME_DIR" "$TMPDIR"
# A restarted engine container keeps its file system: no stale state or pid file.
rm -rf "$XDG_RUNTIME_DIR/rootlesskit" "$XDG_RUNTIME_DIR/docker.pid"
exec rootlesskit \
  --net=slirp4netns --mtu=65520 --disable-host-loopback \
  --port-driver=none \
  --copy-up=/etc --copy-up=/run \
  --state-dir="$XDG_RUNTIME_DIR/rootlesskit" \
  dockerd \
  --host unix:///run/kennel-docker/docker.sock \
  --data-root /var/lib/docker \
  --exec-root "$XDG_RUNTIME_DIR/exec" \
  --pidfile "$XDG_RUNTIME_DIR/docker.pid"
