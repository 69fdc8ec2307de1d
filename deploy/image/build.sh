#!/usr/bin/env bash
# Builds the local image `lockstep:dev` (both daemons) from local files only:
# nothing is pulled, no registry is needed. The image is `FROM scratch` plus a
# staged root filesystem: the two binaries (debug info stripped), exactly the
# shared libraries `ldd` reports for them, the dynamic loader, and what glibc
# needs to resolve names like `coordinator` (nsswitch.conf, libnss_files,
# libnss_dns, libresolv).
#
#   deploy/image/build.sh [debug|release] [--no-cargo] [--bin-dir DIR] [--tag NAME]
#
#   debug|release  cargo profile of the binaries (default: debug)
#   --no-cargo     do not run cargo; reuse the existing binaries of that profile
#   --bin-dir DIR  take the binaries from DIR (implies --no-cargo)
#   --tag NAME     image name (default: $LOCKSTEP_IMAGE or lockstep:dev)
#
# Without --no-cargo it runs `cargo build --bins -p lockstep-coordinator
# -p lockstep-host-agent` (a no-op when up to date) into $CARGO_TARGET_DIR
# (default: <repo>/target). When the image already holds exactly these
# binaries (label lockstep.content), nothing is rebuilt.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
profile=debug
run_cargo=1
bin_dir=""
tag="${LOCKSTEP_IMAGE:-lockstep:dev}"

while [ $# -gt 0 ]; do
  case "$1" in
    debug|release) profile="$1" ;;
    --no-cargo) run_cargo=0 ;;
    --bin-dir) bin_dir="$2"; run_cargo=0; shift ;;
    --tag) tag="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
[ -n "$bin_dir" ] || bin_dir="$target_dir/$profile"

if [ "$run_cargo" = 1 ]; then
  args=(build --bins -p lockstep-coordinator -p lockstep-host-agent --target-dir "$target_dir")
  [ "$profile" = release ] && args+=(--release)
  (cd "$repo" && cargo "${args[@]}")
fi

bins=("$bin_dir/coordinator" "$bin_dir/host-agent")
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "build.sh: $b not found (build it, or drop --no-cargo)" >&2; exit 1; }
done
command -v docker >/dev/null || { echo "build.sh: the docker CLI is not installed" >&2; exit 1; }

# The libraries the binaries load, as ldd reports them (absolute paths,
# including the loader), plus the NSS modules glibc dlopens for name lookup
# (ldd cannot see those). On glibc >= 2.34 files and dns are built into libc,
# but the modules are copied where they exist so older hosts work too.
libs=$(for b in "${bins[@]}"; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u)
[ -n "$libs" ] || { echo "build.sh: ldd reported no libraries" >&2; exit 1; }
libdir=$(dirname "$(ldd "${bins[0]}" | awk '$1 ~ /^libc\.so/ {print $3}')")
for m in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
  if [ -e "$libdir/$m" ]; then libs="$libs"$'\n'"$libdir/$m"; fi
done

# Content key: the binaries, the libraries, this script and the Dockerfile.
key=$( { sha256sum "${bins[@]}" $libs "$0" "$here/Dockerfile" | awk '{print $1}'; } | sha256sum | cut -c1-32)
if [ "$(docker image inspect --format '{{ index .Config.Labels "lockstep.content" }}' "$tag" 2>/dev/null || true)" = "$key" ]; then
  echo "build.sh: $tag is up to date ($profile binaries from $bin_dir)"
  exit 0
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/data"
chmod 1777 "$root/tmp" "$root/data"
for b in "${bins[@]}"; do
  # Keep the symbols (readable panics and backtraces), drop debug info:
  # a debug build shrinks several-fold.
  objcopy --strip-debug "$b" "$root/usr/local/bin/$(basename "$b")" 2>/dev/null || cp "$b" "$root/usr/local/bin/"
done
for l in $libs; do
  mkdir -p "$root$(dirname "$l")"
  cp -L "$l" "$root$l"
done
# Docker bind-mounts /etc/hosts, /etc/resolv.conf and /etc/hostname at run time.
printf 'hosts: files dns\nnetworks: files\n' >"$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/data:/nonexistent\nlockstep:x:10001:10001:lockstep:/data:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nlockstep:x:10001:\n' >"$root/etc/group"
cp "$here/Dockerfile" "$stage/Dockerfile"

# The classic builder needs nothing but the engine; BuildKit (when the buildx
# plugin is installed) handles `FROM scratch` without pulling as well.
if docker buildx version >/dev/null 2>&1; then builder=(); else builder=(env DOCKER_BUILDKIT=0); fi
"${builder[@]}" docker build --quiet --label "lockstep.content=$key" --label "lockstep.profile=$profile" -t "$tag" "$stage" >/dev/null 2>"$stage.log" \
  || { cat "$stage.log" >&2; rm -f "$stage.log"; exit 1; }
rm -f "$stage.log"
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "build.sh: built $tag ($profile, $((size / 1024 / 1024)) MiB)"
