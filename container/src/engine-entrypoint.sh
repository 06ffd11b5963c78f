#!/bin/sh
# kennel: starts an environment's own Docker engine (container/src/engine.rs;
# docs/environments.md, "Docker inside an environment"). Written into the engine image; runs as
# root in the engine container, then execs dockerd (privileged) or drops to the sandbox's uid
# and starts a rootless dockerd in a user namespace (rootless).
#
# Variables (set by kennel): KENNEL_DOCKER_MODE (privileged|rootless), KENNEL_DOCKER_UID and
# KENNEL_DOCKER_GID (the sandbox user's ids: the socket is theirs), KENNEL_DOCKER_PROXY (the
# `dind` egress profile's proxy URL, by address: the engine resolves no names).
set -eu
sock_dir=/run/kennel-docker
data=/var/lib/docker
uid=${KENNEL_DOCKER_UID:?}
gid=${KENNEL_DOCKER_GID:?}
proxy=${KENNEL_DOCKER_PROXY:?}
# Image pulls go through the profile's proxy (dockerd reads these).
export HTTP_PROXY="$proxy" HTTPS_PROXY="$proxy" http_proxy="$proxy" https_proxy="$proxy"
export NO_PROXY=localhost,127.0.0.1 no_proxy=localhost,127.0.0.1
mkdir -p "$sock_dir" "$data"
rm -f "$sock_dir/docker.sock"
# Only the sandbox user (and the engine) may enter the socket directory.
chown "$uid:$gid" "$sock_dir"
chmod 0750 "$sock_dir"
echo "kennel:x:$gid:" >>/etc/group

case "${KENNEL_DOCKER_MODE:?}" in
privileged)
  # The engine container has a private cgroup namespace; Docker mounts its cgroups read-only.
  # Remounting them read-write gives the engine its own subtree only (nested containers stay
  # inside the engine's limits; the host's hierarchy and release_agent are not visible).
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mount -o remount,rw /sys/fs/cgroup
  else
    for d in /sys/fs/cgroup/*; do
      [ -d "$d" ] && [ ! -L "$d" ] || continue
      s=${d##*/}
      o=$s
      [ "$s" = systemd ] && o=none,name=systemd
      umount "$d"
      mount -t cgroup -o "$o" cgroup "$d"
    done
  fi
  echo "kennel: starting a privileged Docker engine" >&2
  exec dockerd --host "unix://$sock_dir/docker.sock" --group "$gid" --data-root "$data"
  ;;
rootless)
  # The container's own /dev/net/tun node (not the host's) for slirp4netns, which runs as the
  # unprivileged user below.
  chmod 0666 /dev/net/tun
  echo "kennel:x:$uid:$gid:kennel:/home/kennel:/bin/sh" >>/etc/passwd
  # Subordinate ids for the user namespace: the engine's uid 0 is $uid on the host, its other
  # ids are 200000.. (never host users).
  echo "kennel:200000:65536" >/etc/subuid
  echo "kennel:200000:65536" >/etc/subgid
  mkdir -p /home/kennel
  chown "$uid:$gid" /home/kennel "$data"
  echo "kennel: starting a rootless Docker engine as uid $uid" >&2
  exec su -s /bin/sh kennel -c 'exec sh /usr/local/lib/kennel/rootless.sh'
  ;;
*)
  echo "kennel: unknown KENNEL_DOCKER_MODE ${KENNEL_DOCKER_MODE}" >&2
  exit 2
  ;;
esac
