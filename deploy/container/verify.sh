#!/usr/bin/env bash
# Builds the Herd image with podman from local base images and a herd binary built
# on this machine, starts a 3-node herd from it on a podman network, and checks
# that it forms, that the nodes run as the non-root user, and that the image's
# HEALTHCHECK passes; then removes what it made. Not part of scripts/test (it needs
# podman and a base image); how the closing notes' container figures were made.
#
#   deploy/container/verify.sh BASE_IMAGE [HERD_BINARY]
#
# BASE_IMAGE: a Debian bookworm image (e.g. made with
#   debootstrap --variant=minbase --include=ca-certificates bookworm rootfs MIRROR
#   tar -C rootfs -c . | podman import - local/debian:bookworm)
# HERD_BINARY: default target/release/herd (glibc of the base or older).
# RUN steps use chroot isolation and containers run without cgroups and with the
# host's limits: what works inside the container these checks were made in.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: verify.sh BASE_IMAGE [HERD_BINARY]}
binary=${2:-target/release/herd}
work=$(mktemp -d)
net=herd-verify
cleanup() {
  podman rm -f herd-v1 herd-v2 herd-v3 >/dev/null 2>&1 || true
  podman network rm -f "$net" >/dev/null 2>&1 || true
  podman rmi -f localhost/herd-verify-bin localhost/herd-verify >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "verify: an image holding the binary as /herd"
cp "$binary" "$work/herd"
printf 'FROM %s\nCOPY herd /herd\n' "$base" > "$work/Containerfile"
podman build --isolation=chroot -q -t herd-verify-bin "$work" >/dev/null

echo "verify: the Herd image (deploy/container/Dockerfile, build stage skipped)"
podman build --isolation=chroot --format docker -q -f deploy/container/Dockerfile \
  --build-arg BUILD_IMAGE="$base" --build-arg RUN_IMAGE="$base" \
  --build-arg BINARY_IMAGE=localhost/herd-verify-bin -t herd-verify "$work" >/dev/null
podman image inspect herd-verify --format 'verify: image {{.Id}}, user {{.Config.User}}, healthcheck {{.HealthCheck.Test}}, {{.Size}} bytes'

echo "verify: three nodes on network $net"
podman network create --subnet 172.29.0.0/24 "$net" >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/herd-secret"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/api-token"
chmod 644 "$work/herd-secret" "$work/api-token"
peers='["172.29.0.11:7401", "172.29.0.12:7401", "172.29.0.13:7401"]'
# Where containers cannot run (an OCI runtime refused, e.g. inside a container that
# may not set rlimits), the image's filesystem is still checked: the binary runs
# in it as the image's user.
fallback() {
  echo "verify: cannot run a container here: $1" >&2
  cid=$(podman create herd-verify)
  mkdir -p "$work/root"
  podman export "$cid" | tar -C "$work/root" -x
  podman rm -f "$cid" >/dev/null
  uid=$(chroot "$work/root" id -u herd)
  echo "verify: in the image's filesystem, as uid $uid: $(chroot --userspec="$uid:$uid" "$work/root" /usr/local/bin/herd --version)"
  chroot --userspec="$uid:$uid" "$work/root" /usr/local/bin/herd check /dev/null >/dev/null 2>&1 || true
  echo "verify: image built and its binary runs as the non-root user; containers NOT started" >&2
  exit 3
}
for i in 1 2 3; do
  podman ${HERD_VERIFY_RUNTIME:+--runtime "$HERD_VERIFY_RUNTIME"} run ${HERD_VERIFY_RUN_FLAGS:---cgroups=disabled --ulimit host} -d --name "herd-v$i" --network "$net" --ip "172.29.0.1$i" \
    -v "$work:/run/herd-verify:ro" \
    -e HERD_NODE__ID="$i" -e HERD_NODE__GRPC="172.29.0.1$i:7401" \
    -e HERD_NODE__HTTP="0.0.0.0:7481" \
    -e HERD_NODE__API_TOKEN_FILE=/run/herd-verify/api-token \
    -e HERD_TOKEN_FILE=/run/herd-verify/api-token \
    -e HERD_CLUSTER__SECRET_FILE=/run/herd-verify/herd-secret \
    -e HERD_CLUSTER__PEERS="$peers" -e HERD_CLUSTER__BOOTSTRAP_EXPECT=3 \
    -e HERD_CLUSTER__MACHINE=none \
    herd-verify node >/dev/null 2>"$work/run.err" || fallback "$(tail -1 "$work/run.err")"
done

for _ in $(seq 1 60); do
  if out=$(podman exec herd-v1 herd status --json 2>/dev/null) &&
     [ "$(printf '%s' "$out" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for n in s["nodes"] if n["alive"]) if s.get("leader") else 0)')" = 3 ]; then
    echo "verify: the herd formed: $(printf '%s' "$out" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("herd", s["herd_id"], "leader", s["leader"], "nodes", [n["id"] for n in s["nodes"]])')"
    echo "verify: node 2 runs as uid $(podman exec herd-v2 id -u) ($(podman exec herd-v2 id -un))"
    podman healthcheck run herd-v3 && echo "verify: HEALTHCHECK of node 3 passes"
    echo "verify: image size $(podman image inspect herd-verify --format '{{.Size}}') bytes"
    exit 0
  fi
  sleep 1
done
echo "verify: the herd did not form within 60 s" >&2
podman logs herd-v1 2>&1 | tail -20 >&2
exit 1
