#!/usr/bin/env bash
# Builds the image from the Dockerfile and checks it as a user would run it: /readyz and the
# HEALTHCHECK, a completion through the built-in mock with the admin key from
# SWITCHYARD_ADMIN_KEY, the key printed on a first start without it, the server running as a
# non-root user, a mounted config file, and the data surviving in the volume when the container
# is replaced. Run by .ci/run, as root.
#
# Where no Docker daemon answers, it starts its own dockerd (package docker.io): data root under
# target/container/docker (the build cache and base images survive between runs), no iptables,
# no default bridge. The containers get a bridge network of their own (CONTAINER_NETWORK=host,
# or a failure to make one, runs them on the host's network, port 8080). Where Docker Hub
# cannot be reached (CONTAINER_BASES=auto tries a pull, =local skips it, =public insists), the
# Dockerfile's base images are replaced through its build arguments: the runtime by Debian
# bookworm made with debootstrap (tarball cached in target/container/), the builder by that plus
# gcc, the host's CA bundle and the host's Rust toolchain (tests/container/rust-local.Dockerfile).
# Either way the Dockerfile's own build runs: cargo build --release inside the builder stage.
# The first run builds everything (about 15 minutes on 2 busy cores); later ones take a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/container
mkdir -p "$work"
image=${SWITCHYARD_IMAGE:-switchyard:ci}
bases=${CONTAINER_BASES:-auto}
key=sy_admin_container_ci
tag=switchyard-ci-$$

step() { echo "-- $*"; }
fail() { echo "container check failed: $*" >&2; exit 1; }
# Only for what the machine cannot do (no root, no daemon that will start): loud, and exit 0
# unless CONTAINER_CHECK_REQUIRED=1.
skip() {
  echo "!!!!!! CONTAINER CHECK SKIPPED: $* !!!!!!" >&2
  [ "${CONTAINER_CHECK_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
}
apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$@" >/dev/null
}

# One run per data root at a time.
exec 9>"$work/lock"
flock -w 1800 9 || fail "another container check holds $work/lock"

dockerd_pid=
exec_root=
net=
cleanup() {
  set +e
  if [ -n "${dk:-}" ]; then
    "${dk[@]}" rm -f "$tag-a" "$tag-b" "$tag-c" >/dev/null 2>&1
    "${dk[@]}" volume rm "$tag-data" "$tag-data-c" >/dev/null 2>&1
    [ -n "$net" ] && [ "$net" != host ] && "${dk[@]}" network rm "$net" >/dev/null 2>&1
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
      # With host networking dockerd leaves its netns/default mounted.
      findmnt -rn -o TARGET | grep "^$exec_root/" | sort -r | xargs -r -n1 umount -l
      rm -rf --one-file-system "$exec_root"
    fi
  fi
}
trap cleanup EXIT

# --- a Docker client with BuildKit (the Dockerfile's cache mounts need it): buildx if it
# is installed, else the docker.io package's client, whose BuildKit is built in.
if docker buildx version >/dev/null 2>&1; then
  dk=(docker)
else
  [ -x /usr/bin/docker ] || apt_install docker.io
  dk=(/usr/bin/docker)
  export DOCKER_BUILDKIT=1
fi

# --- a daemon: the one the environment names, else our own.
if ! "${dk[@]}" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || apt_install docker.io
  [ "$(id -u)" = 0 ] || skip "no Docker daemon answers and starting one needs root"
  exec_root=/run/switchyard-ci.$$
  mkdir -p "$work/docker" "$exec_root"
  dockerd --data-root "$work/docker" --exec-root "$exec_root" --pidfile "$exec_root/dockerd.pid" \
    -H "unix://$exec_root/docker.sock" --iptables=false --ip6tables=false --bridge=none \
    ${CONTAINER_STORAGE_DRIVER:+--storage-driver "$CONTAINER_STORAGE_DRIVER"} \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST=unix://$exec_root/docker.sock
  for _ in $(seq 150); do
    "${dk[@]}" info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$work/dockerd.log" >&2; dockerd_pid=; skip "dockerd exited at start (log above, $work/dockerd.log)"; }
    sleep 0.2
  done
  "${dk[@]}" info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; skip "dockerd did not answer in 30 s (log above)"; }
  step "started dockerd (pid $dockerd_pid, storage driver $("${dk[@]}" info -f '{{.Driver}}'), log $work/dockerd.log)"
fi

# --- the base images
build_args=()
if [ "$bases" = auto ]; then
  if timeout 60 "${dk[@]}" pull -q debian:bookworm-slim >/dev/null 2>&1; then
    bases=public
  else
    bases=local
    step "Docker Hub unreachable (docker pull debian:bookworm-slim failed): local base images"
  fi
fi
if [ "$bases" = local ]; then
  runtime=switchyard-ci/debian:bookworm
  if ! "${dk[@]}" image inspect "$runtime" >/dev/null 2>&1; then
    tarball=$work/debian-bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
      step "debootstrap bookworm (once; cached in $tarball)"
      command -v debootstrap >/dev/null || apt_install debootstrap
      rootfs=$work/rootfs.$$
      debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
      rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"
    fi
    "${dk[@]}" import "$tarball" "$runtime" >/dev/null
  fi
  rust_version=$(rustc --version | cut -d' ' -f2)
  # A new tag when the recipe or the host's CA bundle changes.
  recipe=$(cat tests/container/rust-local.Dockerfile /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-12)
  builder=switchyard-ci/rust:$rust_version-$recipe
  if ! "${dk[@]}" image inspect "$builder" >/dev/null 2>&1; then
    step "builder image $builder: $runtime + gcc + the host's Rust $rust_version"
    sysroot=$(rustc --print sysroot)
    ctx=$work/rust-context
    rm -rf "$ctx"
    mkdir -p "$ctx/rust/bin"
    cp -al "$sysroot/lib" "$ctx/rust/lib" 2>/dev/null || cp -a "$sysroot/lib" "$ctx/rust/lib"
    for b in cargo rustc rustdoc; do cp -a "$sysroot/bin/$b" "$ctx/rust/bin/"; done
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    "${dk[@]}" build -q --network host --build-arg BASE_IMAGE="$runtime" -t "$builder" \
      -f tests/container/rust-local.Dockerfile "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  build_args=(--build-arg RUST_IMAGE="$builder" --build-arg RUNTIME_IMAGE="$runtime")
  step "base images: $builder and $runtime (Docker Hub not used)"
else
  step "base images: the Dockerfile's defaults from Docker Hub"
fi

# --- build
step "docker build -t $image ."
start=$(date +%s)
"${dk[@]}" build --network host "${build_args[@]}" -t "$image" . >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log" >&2; fail "docker build failed (log: $work/build.log)"; }
size=$("${dk[@]}" image inspect -f '{{.Size}}' "$image")
step "built in $(($(date +%s) - start)) s; image size $((size / 1000000)) MB"

# --- run
# A subnet no route of the host uses: another check's daemon (another checkout's CI) picks its
# own, and two bridges with one subnet would break both.
subnet=()
if command -v ip >/dev/null; then
  for _ in $(seq 50); do
    candidate=172.$((RANDOM % 14 + 18)).$((RANDOM % 256)).0/24
    ip route | grep -q "^${candidate%.0/24}\." || { subnet=(--subnet "$candidate"); break; }
  done
fi
if [ "${CONTAINER_NETWORK:-}" != host ] && net=$tag &&
  "${dk[@]}" network create "${subnet[@]}" "$net" >/dev/null 2>&1; then
  run_net=(--network "$net")
else
  net=host
  run_net=(--network host)
  step "host networking (CONTAINER_NETWORK=host, or no container network could be made)"
  # Else the checks below would talk to whatever already listens there.
  ! curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/ || fail "host networking needs port 8080, which is in use"
fi
addr_of() {
  if [ "$net" = host ]; then echo http://127.0.0.1:8080; return; fi
  echo "http://$("${dk[@]}" inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"):8080"
}
wait_ready() { # container → its base URL once /readyz answers 200 and the HEALTHCHECK says healthy
  local c=$1 base health
  base=$(addr_of "$c")
  for _ in $(seq 300); do
    curl -sf "$base/readyz" >/dev/null 2>&1 && break
    [ "$("${dk[@]}" inspect -f '{{.State.Running}}' "$c")" = true ] || { "${dk[@]}" logs "$c" >&2; fail "$c exited"; }
    sleep 0.1
  done
  curl -sf "$base/readyz" >/dev/null || { "${dk[@]}" logs "$c" >&2; fail "$c: /readyz never answered 200"; }
  for _ in $(seq 60); do
    health=$("${dk[@]}" inspect -f '{{.State.Health.Status}}' "$c")
    [ "$health" = healthy ] && break
    sleep 0.5
  done
  [ "$health" = healthy ] || fail "$c: HEALTHCHECK says $health"
  echo "$base"
}
auth=(-H "authorization: Bearer $key")

step "container a: the image's own config, admin key from SWITCHYARD_ADMIN_KEY, volume $tag-data"
"${dk[@]}" run -d --name "$tag-a" "${run_net[@]}" -e SWITCHYARD_ADMIN_KEY="$key" \
  -v "$tag-data:/data" "$image" >/dev/null
base=$(wait_ready "$tag-a")
step "ready and healthy at $base"

uid=$("${dk[@]}" exec "$tag-a" awk '/^Uid:/ {print $2, $3}' /proc/1/status)
[ "$uid" = "10001 10001" ] || fail "the server runs with uid $uid, not 10001"
owner=$("${dk[@]}" exec "$tag-a" stat -c %u /data)
[ "$owner" = 10001 ] || fail "/data belongs to uid $owner"
step "server process uid 10001 (not root), /data owned by it"
curl -sf "$base/metrics" | grep -q '^switchyard_store_size_bytes [1-9]' ||
  fail "/metrics has no non-zero switchyard_store_size_bytes"

curl -s "$base/v1/chat/completions" -H 'authorization: Bearer wrong' -H 'content-type: application/json' \
  -d '{"model":"chat-default","messages":[{"role":"user","content":"hi"}]}' -o /dev/null -w '%{http_code}' |
  grep -qx 401 || fail "a wrong key was not refused with 401"
reply=$(curl -sf "$base/v1/chat/completions" "${auth[@]}" -H 'content-type: application/json' \
  -d '{"model":"chat-default","messages":[{"role":"user","content":"Hello from a container"}]}') ||
  fail "POST /v1/chat/completions with the admin key failed"
text=$(jq -r '.choices[0].message.content' <<<"$reply")
id=$(jq -r '.x_switchyard.execution_id' <<<"$reply")
[ -n "$text" ] && [ "$text" != null ] && [ "$(jq -r '.choices[0].finish_reason' <<<"$reply")" = stop ] ||
  fail "unexpected completion: $reply"
step "completion through the mock: execution $id, ${#text} characters"

step "container b: replaces a on the same volume, with tests/container/mounted.toml as its config"
"${dk[@]}" stop -t 10 "$tag-a" >/dev/null
"${dk[@]}" rm "$tag-a" >/dev/null
"${dk[@]}" run -d --name "$tag-b" "${run_net[@]}" -e SWITCHYARD_ADMIN_KEY="$key" \
  -v "$tag-data:/data" -v "$root/tests/container/mounted.toml:/etc/switchyard/config.toml:ro" \
  "$image" >/dev/null
base=$(wait_ready "$tag-b")
stored=$(curl -sf "$base/v1/executions/$id" "${auth[@]}") || fail "execution $id is gone after the restart"
[ "$(jq -r .status <<<"$stored")" = completed ] && [ "$(jq -r .output.text <<<"$stored")" = "$text" ] ||
  fail "execution $id came back different: $stored"
curl -sf "$base/v1/models" "${auth[@]}" | jq -e '.data | map(.id) | index("chat-mounted")' >/dev/null ||
  fail "the mounted config's model chat-mounted is not listed"
step "execution $id survived in the volume (same text); the mounted config is in use"

step "docker restart (same container)"
"${dk[@]}" restart -t 10 "$tag-b" >/dev/null
base=$(wait_ready "$tag-b")
curl -sf "$base/v1/executions/$id" "${auth[@]}" | jq -e '.status == "completed"' >/dev/null ||
  fail "execution $id is gone after docker restart"

"${dk[@]}" rm -f "$tag-b" >/dev/null

step "container c: a fresh volume and SWITCHYARD_ADMIN_KEY empty (as compose.yaml passes it unset)"
"${dk[@]}" run -d --name "$tag-c" "${run_net[@]}" -e SWITCHYARD_ADMIN_KEY= -v "$tag-data-c:/data" "$image" >/dev/null
base=$(wait_ready "$tag-c")
printed=$("${dk[@]}" logs "$tag-c" 2>/dev/null | sed -n 's/^  \(sy_[A-Za-z0-9_-]*\)$/\1/p')
[ -n "$printed" ] || { "${dk[@]}" logs "$tag-c" >&2; fail "the first start printed no admin key"; }
curl -sf "$base/v1/executions?limit=1" -H "authorization: Bearer $printed" >/dev/null ||
  fail "the printed admin key is refused"
step "the first start printed an admin key, and it works"

# As the README shows it: a config from examples/ mounted and checked through the entrypoint.
checked=$("${dk[@]}" run --rm --network none -v "$root/examples/openai.toml:/cfg.toml:ro" \
  "$image" check-config /cfg.toml) || fail "check-config through the entrypoint failed: $checked"
grep -q '^/cfg.toml: valid$' <<<"$checked" || fail "check-config said: $checked"
step "check-config through the entrypoint works"
echo "container check: ok ($image, $((size / 1000000)) MB)"
