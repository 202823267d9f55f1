#!/usr/bin/env bash
# A multi-region Starling federation on one Linux host, with real network latency
# between the regions.
#
# Every region gets a network namespace of its own, linked by a veth pair to a hub
# namespace that routes between them and runs the global master. Each region's end of
# its link delays what it sends by --delay-ms (tc netem), so a packet from one region
# to another, or to the global master, is delayed that much one way. Inside a region
# (its nodes share its namespace) nothing is delayed.
#
# Only addresses inside the namespaces this script creates are used (10.77.0.0/16);
# nothing outside them is touched. Every namespace, link and process it made is
# removed when it exits, however it exits (trap), and it never runs longer than
# --duration seconds.
#
# Usage (as root, needs ip, tc and curl):
#   deploy/lab/netem-lab.sh [--regions 2] [--nodes 1] [--delay-ms 100]
#                           [--duration 600] [--bin-dir target/release] [--check]
#
#   --delay-ms 0 adds no qdisc: the same federation without injected latency.
#   --check   publish in the first region (the channel's home) and measure when the
#             message is readable in the second, whose history reads go to the home
#             over the bridge; exit 0 if that took at least --delay-ms longer than a
#             read in the first region, 1 if not.
#   Without --check the lab runs until Ctrl-C or --duration, printing where clients
#   connect (`ip netns exec <namespace> ...` reaches them).
set -euo pipefail

regions=2
nodes=1
delay_ms=100
duration=600
bin_dir=""
check=false

while [ $# -gt 0 ]; do
  case "$1" in
    --regions) regions="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --delay-ms) delay_ms="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --check) check=true; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "netem-lab: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "netem-lab: $*"; }
fail() { echo "netem-lab: FAILED: $*" >&2; exit 1; }

# --- preconditions, before anything is created ----------------------------------
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces and tc)"
for tool in ip tc curl; do
  command -v "$tool" >/dev/null || fail "needs $tool"
done
[ "$regions" -ge 2 ] && [ "$regions" -le 9 ] || fail "--regions must be 2..9"
[ "$nodes" -ge 1 ] && [ "$nodes" -le 5 ] || fail "--nodes must be 1..5"
if [ -z "$bin_dir" ]; then
  bin_dir="$(cd "$(dirname "$0")/../.." && pwd)/target/release"
  [ -x "$bin_dir/region-node" ] || bin_dir="$(dirname "$bin_dir")/debug"
fi
node_bin="$bin_dir/region-node"
gm_bin="$bin_dir/global-master"
[ -x "$node_bin" ] && [ -x "$gm_bin" ] || fail "no region-node and global-master in $bin_dir (build them, or pass --bin-dir)"

# Names carry a tag unique to this run, so two labs (or a lab and anything else on
# the host) never collide, and cleanup removes exactly what this run made.
tag="$(printf '%04x' "$$" | tail -c 4)"
prefix="stlab-$tag"
hub="$prefix-hub"
# The run's folder (configs, logs, data): a fresh one under $TMPDIR.
work="$(mktemp -d)"
pids=()
namespaces=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Deleting a namespace deletes the veth ends in it, and so their peers.
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -d "$work" ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] && { echo "--- $log"; tail -n 20 "$log"; } >&2
    done
  fi
  rm -rf "$work"
  say "removed namespaces ${namespaces[*]:-(none)}"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
# The watchdog's TERM ends a lab that ran its time cleanly, and fails a check.
trap 'if [ -f "$work/timed-out" ] && ! $check; then exit 0; fi; echo "netem-lab: stopped (TERM)" >&2; exit 143' TERM

# The whole run is bounded: past --duration the lab ends itself.
# It holds no output open, and takes its sleep with it when cleanup stops it.
(
  exec >/dev/null 2>&1
  sleep "$duration" &
  nap=$!
  trap 'kill "$nap"; exit 0' TERM
  wait "$nap"
  touch "$work/timed-out"
  kill -TERM $$
) &
watchdog=$!
pids+=("$watchdog")

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# --- namespaces and links ------------------------------------------------------------
say "tag $tag: $regions regions of $nodes node(s), ${delay_ms} ms between regions"
ip netns add "$hub"
namespaces+=("$hub")
in_ns "$hub" ip link set lo up
in_ns "$hub" ip addr add 10.77.0.1/32 dev lo
in_ns "$hub" sysctl -qw net.ipv4.ip_forward=1

region_ip() { echo "10.77.$1.2"; }

for r in $(seq 1 "$regions"); do
  ns="$prefix-r$r"
  ip netns add "$ns"
  namespaces+=("$ns")
  in_ns "$ns" ip link set lo up
  # One veth pair per region: "<tag>r<N>a" in the region, "<tag>r<N>b" in the hub.
  a="sl${tag}r${r}a"
  b="sl${tag}r${r}b"
  ip link add "$a" netns "$ns" type veth peer name "$b" netns "$hub"
  in_ns "$ns" ip addr add "$(region_ip "$r")/24" dev "$a"
  in_ns "$ns" ip link set "$a" up
  in_ns "$ns" ip route add default via "10.77.$r.1"
  in_ns "$hub" ip addr add "10.77.$r.1/24" dev "$b"
  in_ns "$hub" ip link set "$b" up
  # What leaves the region is delayed: towards other regions and the global master.
  if [ "$delay_ms" -gt 0 ]; then
    in_ns "$ns" tc qdisc add dev "$a" root netem delay "${delay_ms}ms" \
      || fail "tc netem is not available (the kernel needs sch_netem)"
  fi
done

[ "${STARLING_LAB_FAIL_AT:-}" = "setup" ] && fail "asked to fail after setup (cleanup test)"

# --- certificates and the global master ----------------------------------------------
"$node_bin" ca create --dir "$work/ca" >/dev/null
"$node_bin" ca issue --dir "$work/ca" --name gm-1 >/dev/null

cat >"$work/gm-1.toml" <<EOF
[member]
id = 1
data_dir = "$work/gm-1"

[listen]
raft = "10.77.0.1:7100"
http = "10.77.0.1:7101"

[tls]
ca_cert = "$work/ca/ca.pem"
cert = "$work/ca/gm-1.pem"
key = "$work/ca/gm-1.key"
EOF
in_ns "$hub" "$gm_bin" --config "$work/gm-1.toml" >"$work/gm-1.log" 2>&1 &
pids+=("$!")

wait_healthy() {
  local ns="$1" addr="$2" what="$3"
  for _ in $(seq 1 300); do
    if in_ns "$ns" curl -sf -o /dev/null --max-time 2 "http://$addr/health"; then
      return 0
    fi
    sleep 0.2
  done
  fail "$what at $addr never became healthy"
}
wait_healthy "$hub" 10.77.0.1:7101 "global master"

# --- regions ---------------------------------------------------------------------------
key_secret="lab-secret-$tag"
replication=$(( nodes >= 2 ? 2 : 1 ))
for r in $(seq 1 "$regions"); do
  ns="$prefix-r$r"
  ip_r="$(region_ip "$r")"
  for i in $(seq 1 "$nodes"); do
    id="r$r-$i"
    "$node_bin" ca issue --dir "$work/ca" --name "$id" >/dev/null
    seeds=""
    for j in $(seq 1 "$nodes"); do
      [ "$j" = "$i" ] && continue
      seeds="$seeds${seeds:+, }\"$ip_r:74$j$j\""
    done
    cat >"$work/$id.toml" <<EOF
[node]
id = "$id"
region = "r$r"
data_dir = "$work/$id"
cluster_secret = "lab-cluster-secret-$tag"

[listen]
client = "$ip_r:80$i$i"

[mesh]
listen = "$ip_r:74$i$i"
seeds = [$seeds]
replication_factor = $replication

[bridge]
listen = "$ip_r:75$i$i"

[tls]
ca_cert = "$work/ca/ca.pem"
cert = "$work/ca/$id.pem"
key = "$work/ca/$id.key"

[admin]
token = "lab-admin-$tag"

[global]
members = ["10.77.0.1:7100"]

[[apps]]
id = "lab"

[[apps.keys]]
id = "k"
secret = "$key_secret"
EOF
    "$node_bin" --config "$work/$id.toml" --check-config >/dev/null
    in_ns "$ns" "$node_bin" --config "$work/$id.toml" >"$work/$id.log" 2>&1 &
    pids+=("$!")
  done
done
for r in $(seq 1 "$regions"); do
  for i in $(seq 1 "$nodes"); do
    wait_healthy "$prefix-r$r" "$(region_ip "$r"):80$i$i" "node r$r-$i"
  done
done

say "federation ready; API key lab.k:$key_secret"
for r in $(seq 1 "$regions"); do
  say "  region r$r: ip netns exec $prefix-r$r ... http://$(region_ip "$r"):8011 (dashboard at /dashboard)"
done
say "  global master: ip netns exec $hub ... http://10.77.0.1:7101/metrics"

if ! $check; then
  say "running until Ctrl-C or ${duration}s"
  while true; do sleep 1; done
fi

# --- the check -------------------------------------------------------------------------
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
channel="lab-check-$tag"
r1="$prefix-r1"
r2="$prefix-r2"
url1="http://$(region_ip 1):8011/channels/$channel/messages"
url2="http://$(region_ip 2):8011/channels/$channel/messages"
auth="lab.k:$key_secret"

publish() {
  in_ns "$r1" curl -sf --max-time 10 -u "$auth" -H 'content-type: application/json' \
    -d "{\"name\":\"$1\",\"data\":\"from r1\"}" "$url1" >/dev/null
}
# The first publish homes the channel in r1.
publish first || fail "publishing in r1"
in_ns "$r2" curl -sf --max-time 10 -u "$auth" "$url2" >/dev/null || fail "reading history in r2"

# How long one history read takes in region $1 (ms), the fastest of three: curl and
# the host add noise, never less.
read_ms() {
  local ns="$1" url="$2" best="" t
  for _ in 1 2 3; do
    t="$(now_ms)"
    in_ns "$ns" curl -sf --max-time 10 -u "$auth" "$url" >/dev/null || fail "reading history in $ns"
    t=$(( $(now_ms) - t ))
    if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best="$t"; fi
  done
  echo "$best"
}

publish probe || fail "publishing the probe in r1"
published="$(now_ms)"
arrived=""
for _ in $(seq 1 200); do
  if in_ns "$r2" curl -sf --max-time 10 -u "$auth" "$url2" | grep -q '"name":"probe"'; then
    arrived="$(now_ms)"
    break
  fi
done
[ -n "$arrived" ] || fail "the probe published in r1 never became readable in r2"
elapsed=$(( arrived - published ))
local_ms="$(read_ms "$r1" "$url1")"
remote_ms="$(read_ms "$r2" "$url2")"
extra=$(( remote_ms - local_ms ))
say "the probe published in r1 was readable in r2 after ${elapsed} ms; a read takes ${local_ms} ms in r1 (the home) and ${remote_ms} ms in r2 (through the bridge): ${extra} ms more, injected delay ${delay_ms} ms"
[ "$elapsed" -ge "$delay_ms" ] || fail "the probe arrived after ${elapsed} ms, sooner than the injected ${delay_ms} ms"
[ "$extra" -ge "$delay_ms" ] || fail "a read in r2 took only ${extra} ms longer than in r1, less than the injected ${delay_ms} ms"
say "PASSED"
