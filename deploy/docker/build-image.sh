#!/usr/bin/env bash
# Builds the Mailplane image (`make image`): one image, any process by its command.
#
#   deploy/docker/build-image.sh [TAG]        (default mailplane:dev)
#
# Works with no container registry: the base image is a Debian bookworm made with
# `debootstrap --variant=minbase` (Python 3.11 and CA certificates) and `docker import`ed,
# its tarball kept in .mailplane/image/ so later builds reuse it; the Python
# dependencies are installed from uv.lock (`uv export --frozen --no-dev`) on the host
# into the build context, from uv's cache, and copied in. With a registry, any
# Debian-based Python 3.11 image works as the base: MAILPLANE_IMAGE_BASE=python:3.11-slim.
#
# A Docker daemon is needed; when none answers and this runs as root, one is started
# without networking of its own (`dockerd --bridge=none --iptables=false`): the image
# is built and run with `--network none`.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-mailplane:dev}
STATE=.mailplane/image
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
BASE=${MAILPLANE_IMAGE_BASE:-mailplane-base:bookworm}
UV=.tools/bin/uv
mkdir -p "$STATE"

# 1. A daemon.
if ! "$DOCKER" info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "no Docker daemon answers; start one (dockerd)" >&2; exit 1; }
    nohup dockerd --bridge=none --iptables=false --ip-masq=false \
        >"$STATE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
    "$DOCKER" info >/dev/null || { echo "dockerd did not start; see $STATE/dockerd.log" >&2; exit 1; }
fi

# 2. The base image, made without a registry.
if [ "$BASE" = mailplane-base:bookworm ] && ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    if [ ! -s "$STATE/base-bookworm.tar" ]; then
        # The host's Debian mirror (deb822 sources or sources.list).
        mirror=$(grep -hoE '^URIs: *[^ ]+/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
                 | head -1 | awk '{print $2}')
        [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +[^ ]+/debian ' /etc/apt/sources.list \
                 2>/dev/null | head -1 | awk '{print $2}')
        root=$(mktemp -d)
        trap 'rm -rf "$root"' EXIT
        debootstrap --variant=minbase --include=python3,ca-certificates,tzdata \
            bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
            || { echo "debootstrap failed; see $STATE/debootstrap.log" >&2; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$STATE/base-bookworm.tar.part" . && \
            mv "$STATE/base-bookworm.tar.part" "$STATE/base-bookworm.tar"
        rm -rf "$root"
        trap - EXIT
    fi
    "$DOCKER" import "$STATE/base-bookworm.tar" "$BASE" >/dev/null
fi

# 3. The build context: the locked dependencies and the code.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
"$UV" export --frozen --no-dev --no-emit-project --no-hashes --quiet -o "$context/requirements.txt"
"$UV" pip install --quiet --target "$context/site-packages" --python .venv/bin/python \
    --no-deps -r "$context/requirements.txt"
mkdir -p "$context/app/protos"
cp -r services gateway deploy "$context/app/"
cp -r protos/mailplane "$context/app/protos/"
find "$context/app" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$context/app/deploy/kubernetes" "$context/app/deploy/docker"
cp deploy/docker/Dockerfile "$context/Dockerfile"
"$DOCKER" build --quiet --network none --build-arg "BASE=$BASE" -t "$TAG" "$context" >/dev/null
echo "$TAG"
