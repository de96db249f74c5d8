#!/usr/bin/env bash
# `make image`: build the agent's image with podman, from Debian's archive and PyPI
# alone (no container registry needed).
#
#   hack/image.sh                 build $IMAGE (default ghcr.io/cozystack/wholeip:<version>)
#   hack/image.sh base            only make sure the debootstrap base exists; print its name
#
# Environment:
#   IMAGE          the tag to build
#   BASE_IMAGE     the Containerfile's base. Unset: debian:bookworm-slim when podman
#                  already has it, otherwise the debootstrap base. "debootstrap": always
#                  the debootstrap base. Anything else: that image (podman pulls it if
#                  it is missing and a registry is reachable).
#   DEBIAN_MIRROR  the archive debootstrap and the base's apt use (deb.debian.org)
#   CA_BUNDLE      CA certificates pip trusts during the build (this machine's)
#   PODMAN_RUNTIME the OCI runtime (default: runc when installed, else podman's own)
#
# The debootstrap base is a minimal bookworm (--variant=minbase) with python3 and
# nothing else, slimmed like debian:bookworm-slim (no docs, manuals, translations),
# imported into podman as $DEBOOTSTRAP_BASE. podman's storage keeps it,
# so it is made once per machine (about a minute); `podman rmi` it to make it again.
# Its tag carries a recipe number: change the recipe, bump the number.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY_BASE=docker.io/library/debian:bookworm-slim
DEBOOTSTRAP_BASE=localhost/wholeip-base:bookworm-minbase-2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
IMAGE=${IMAGE:-ghcr.io/cozystack/wholeip:$VERSION}
# This kind of machine has no CAP_SYS_RESOURCE: podman cannot raise the limits past
# the current hard ones, so ask for limits it can set.
ULIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=8192:8192)

command -v podman >/dev/null || {
  echo "image: podman is not installed (apt-get install podman, or make bootstrap)" >&2
  exit 1
}
# runc rather than Debian's default crun when it is there: crun 1.8 refuses machines
# with hybrid cgroups (v1 hierarchies plus a unified v2 mount), which this kind is.
PODMAN=(podman)
if [ -z "${PODMAN_RUNTIME:-}" ] && command -v runc >/dev/null; then PODMAN_RUNTIME=runc; fi
if [ -n "${PODMAN_RUNTIME:-}" ]; then PODMAN+=(--runtime "$PODMAN_RUNTIME"); fi

make_base() {
  if podman image exists "$DEBOOTSTRAP_BASE"; then
    return
  fi
  command -v debootstrap >/dev/null || {
    echo "image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  }
  [ "$(id -u)" -eq 0 ] || {
    echo "image: debootstrap needs root" >&2
    exit 1
  }
  local root
  root=$(mktemp -d /var/tmp/wholeip-base.XXXXXX)
  # Everything below deletes under "$root": make sure it is the fresh directory.
  case "$root" in /var/tmp/wholeip-base.?*) ;; *) exit 1 ;; esac
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  echo "image: debootstrap bookworm (minbase + python3) from $MIRROR"
  local started=$SECONDS
  if ! debootstrap --variant=minbase --include=python3 bookworm "$root" "$MIRROR" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    rm -f "$root.log"
    exit 1
  fi
  rm -f "$root.log"
  # The point release and security fixes too, for what the Containerfile installs.
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
  # Slim like debian:bookworm-slim: no documentation, manual pages or translations
  # (the copyright files stay), now and for every package installed later.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
SLIM
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,groff,info,lintian}/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/var/log/* "$root"/tmp/*
  tar -C "$root" --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' - "$DEBOOTSTRAP_BASE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "image: base $DEBOOTSTRAP_BASE made in $((SECONDS - started))s"
}

# One build at a time on a machine (the base especially).
exec 9>/var/tmp/wholeip-image.lock
flock 9

base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
  if podman image exists "$REGISTRY_BASE"; then base=$REGISTRY_BASE; else base=debootstrap; fi
fi
if [ "$base" = debootstrap ]; then
  make_base
  base=$DEBOOTSTRAP_BASE
fi

if [ "${1:-}" = base ]; then
  echo "$base"
  exit 0
fi

started=$SECONDS
echo "image: podman build $IMAGE from $base"
# --network host: the build's RUN steps reach apt and PyPI as this machine does, and
# trust what it trusts: its CA bundle is mounted for pip (never copied into a layer).
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CERT_ARGS=()
if [ -s "$CA_BUNDLE" ]; then
  CERT_ARGS=(-v "$CA_BUNDLE:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi
"${PODMAN[@]}" build --network host "${ULIMITS[@]}" "${CERT_ARGS[@]}" \
  --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$VERSION" \
  -t "$IMAGE" -f Containerfile .
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE, $((size / 1024 / 1024)) MiB, built in $((SECONDS - started))s"
