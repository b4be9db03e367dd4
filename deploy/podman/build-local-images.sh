#!/usr/bin/env bash
# Builds the images the compose file needs without a container registry, with podman:
#   a Debian bookworm base (debootstrap, from the mirror apt already uses), a Python base on it,
#   the application image from the project's Dockerfile (PYTHON_IMAGE = that base), and
#   Redis-compatible and PostgreSQL images from Debian's packages.
# The hash of each image's inputs is recorded beside its image id (in $STATE/hashes); an image
# whose inputs are unchanged is kept. (Not as an image label: podman build --label with a new
# value misses the layer cache at every step, dependencies included.) pip inside the build uses the host's pip configuration (local wheel folders, indexes,
# CA bundle, constraints), mounted read-only, so no wheel already on this disk is downloaded.
#
#   deploy/podman/build-local-images.sh            # prints the image names as NAME=image lines
#   FORCE=1 deploy/podman/build-local-images.sh    # rebuild everything
#
# Needs root, podman and debootstrap (apt-get install -y podman debootstrap catatonit).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/deploy/podman"
STATE=${FRACTURE_PODMAN_STATE:-/var/tmp/fracture-podman}
SUITE=bookworm
TAG=${FRACTURE_LOCAL_TAG:-local}
BASE_IMAGE=localhost/fracture-debian-base:$SUITE
PYTHON_IMAGE=localhost/fracture-python-base:3.11-$SUITE
APP_IMAGE=localhost/fracture-screening:$TAG
REDIS_IMAGE=localhost/fracture-redis:$TAG
POSTGRES_IMAGE=localhost/fracture-postgres:$TAG

mkdir -p "$STATE/hashes"
# The sandbox here refuses podman's default ulimits; these fit. Kept if the caller set one.
if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$STATE/containers.conf"
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n' \
        > "$CONTAINERS_CONF"
fi

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in podman debootstrap; do
    command -v "$tool" > /dev/null || { log "$tool is missing: apt-get install -y $tool"; exit 1; }
done

hash_of() { sha256sum "$@" | sha256sum | cut -c1-16; }
image_id() { podman image inspect --format '{{.Id}}' "$1"; }
record() { echo "$(image_id "$1") $2" > "$STATE/hashes/${1//[\/:]/_}"; }  # IMAGE HASH
up_to_date() {  # IMAGE HASH
    local id
    id=$(image_id "$1" 2>/dev/null) || return 1
    [ -z "${FORCE:-}" ] && [ "$(cat "$STATE/hashes/${1//[\/:]/_}" 2>/dev/null)" = "$id $2" ]
}

# The Debian mirror apt uses on this host (deb822 "URIs:" or one-line "deb" sources).
debian_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    local uri
    uri=$(grep -h -s -E '^[[:space:]]*(URIs:|deb )' "${files[@]}" \
          | grep -o -E '(https?|file)://[^ ]*/debian/?' | grep -v security | head -1 || true)
    [ -n "$uri" ] || { log "no Debian mirror in apt's sources; set DEBIAN_MIRROR"; exit 1; }
    echo "$uri"
}

build_base() {
    local mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
    local hash
    hash=$(printf '%s %s minbase\n' "$SUITE" "$mirror" | sha256sum | cut -c1-16)
    if up_to_date "$BASE_IMAGE" "$hash"; then log "kept $BASE_IMAGE"; return; fi
    log "debootstrap $SUITE from the host's Debian mirror"
    local rootfs="$STATE/rootfs-$SUITE"
    rm -rf "$rootfs"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" \
        > /dev/null
    rm -rf "$rootfs"
    record "$BASE_IMAGE" "$hash"
    log "built $BASE_IMAGE"
}

build_from_containerfile() {  # IMAGE CONTAINERFILE [extra inputs...]
    local image=$1 file=$2; shift 2
    local hash
    hash=$( (image_id "$BASE_IMAGE"; hash_of "$HERE/$file" "$@") | sha256sum | cut -c1-16)
    if up_to_date "$image" "$hash"; then log "kept $image"; return; fi
    log "building $image"
    local logfile="$STATE/${file#Containerfile.}-build.log"
    podman build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f "$HERE/$file" -t "$image" "$HERE" > "$logfile" 2>&1 \
        || { tail -40 "$logfile" >&2; exit 1; }
    record "$image" "$hash"
    log "built $image"
}

# The host's pip settings as a pip.conf for the build, plus a -v for each local path they name.
pip_mounts() {
    local conf="$STATE/pip.conf" pip=${PIP:-pip3}
    local -a mounts=()
    echo "[global]" > "$conf"
    if command -v "$pip" > /dev/null; then
        local key value path
        while IFS='=' read -r key value; do
            value=${value#\'}; value=${value%\'}
            case "$key" in
                global.find-links|global.extra-index-url|global.index-url|global.constraint|global.cert) ;;
                *) continue ;;
            esac
            echo "${key#global.} = $value" >> "$conf"
            for path in $value; do
                path=${path#file://}
                case "$path" in /*) ;; *) continue ;; esac  # a remote index: nothing to mount
                [ -e "$path" ] || continue
                # an index's simple/ links to files beside it: mount the folder above
                case "$path" in */simple|*/simple/) path=$(dirname "${path%/}") ;; esac
                mounts+=("-v" "$path:$path:ro")
            done
        done < <("$pip" config list 2>/dev/null | grep '^global\.')
    fi
    mounts+=("-v" "$conf:/etc/pip.conf:ro")
    printf '%s\n' "${mounts[@]}"
}

# The packages the wheel holds, as pyproject.toml lists them (so a new package is hashed too).
packages() {
    python3 -c 'import sys, tomllib
found = tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["packages"]["find"]
print("\n".join(pattern.rstrip("*") for pattern in found["include"]))' "$REPO/pyproject.toml"
}

# The application's build inputs: what the Dockerfile copies (.dockerignore applied by podman).
app_inputs_hash() {
    local -a dirs
    mapfile -t dirs < <(packages)
    (
        cd "$REPO"
        image_id "$PYTHON_IMAGE"
        find Dockerfile .dockerignore pyproject.toml README.md "${dirs[@]}" \
             -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
             \( ! -path 'model/weights/*' -o -name 'fracture.pt' -o -name 'fracture-single-pass.pt' \) \
             -print0 2>/dev/null | sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-16
}

build_app() {
    local hash
    hash=$(app_inputs_hash)
    if up_to_date "$APP_IMAGE" "$hash"; then log "kept $APP_IMAGE"; return; fi
    local -a mounts
    mapfile -t mounts < <(pip_mounts)
    local previous
    previous=$(image_id "$APP_IMAGE" 2>/dev/null || true)
    log "building $APP_IMAGE (PYTHON_IMAGE=$PYTHON_IMAGE; the first build installs torch: minutes)"
    podman build --network=host --layers \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "TORCH_VARIANT=cuda" \
        "${mounts[@]}" -f "$REPO/Dockerfile" -t "$APP_IMAGE" "$REPO" \
        > "$STATE/app-build.log" 2>&1 || { tail -40 "$STATE/app-build.log" >&2; exit 1; }
    record "$APP_IMAGE" "$hash"
    # The image this one replaces; its layers shared with the new one (the dependencies) stay.
    if [ -n "$previous" ] && [ "$previous" != "$(image_id "$APP_IMAGE")" ]; then
        podman rmi "$previous" > /dev/null 2>&1 || true
    fi
    # Each build also leaves its `build` stage (sources, models, wheel) untagged: drop those
    # made since the Python base. Layer-cache steps have children, so they are not dangling.
    local -a dangling
    mapfile -t dangling < <(podman images --quiet --filter dangling=true \
                                          --filter "since=$PYTHON_IMAGE")
    if [ "${#dangling[@]}" -gt 0 ]; then
        podman rmi "${dangling[@]}" > /dev/null 2>&1 || true
    fi
    log "built $APP_IMAGE ($(podman image inspect --format '{{.Size}}' "$APP_IMAGE" | numfmt --to=iec))"
}

start=$(date +%s)
build_base
build_from_containerfile "$PYTHON_IMAGE" Containerfile.python
build_from_containerfile "$REDIS_IMAGE" Containerfile.redis
build_from_containerfile "$POSTGRES_IMAGE" Containerfile.postgres "$HERE/postgres-entrypoint.sh"
build_app
log "images ready in $(( $(date +%s) - start )) s"
echo "FRACTURE_IMAGE=$APP_IMAGE"
echo "REDIS_IMAGE=$REDIS_IMAGE"
echo "POSTGRES_IMAGE=$POSTGRES_IMAGE"
