#!/usr/bin/env bash
# Builds the bastion image from docker/Dockerfile, from the repository root.
#
#   docker/build.sh [-t TAG] [--base IMAGE] [--prebuilt]
#
#   -t TAG        image name (default bastion:latest)
#   --base IMAGE  runtime base (default debian:bookworm-slim; docker/base.sh
#                 builds one locally where nothing can be pulled)
#   --prebuilt    use the host's target/release/bastion (run `cargo build
#                 --release` first; stripped into target/docker/) instead of
#                 compiling in the rust:1-bookworm image
set -euo pipefail
cd "$(dirname "$0")/.."

tag=bastion:latest base=debian:bookworm-slim prebuilt=0
while [ $# -gt 0 ]; do
  case $1 in
    -t) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --prebuilt) prebuilt=1; shift ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done

args=(-f docker/Dockerfile --build-arg "BASE=$base" -t "$tag")
if [ "$prebuilt" = 1 ]; then
  mkdir -p target/docker
  for bin in bastion bastion-worker; do
    [ -x "target/release/$bin" ] || { echo "build.sh: target/release/$bin is missing: cargo build --release first" >&2; exit 1; }
    # Debug line tables are for profiling on the host, not for the image.
    objcopy --strip-debug "target/release/$bin" "target/docker/$bin.tmp"
    mv "target/docker/$bin.tmp" "target/docker/$bin"
  done
  args+=(--target prebuilt)
fi
docker build -q "${args[@]}" . >/dev/null
echo "build.sh: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
