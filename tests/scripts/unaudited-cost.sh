#!/bin/bash
# Connections made OUTSIDE the audited cgroup: what do the recorder's programs cost them?
# bpf stats (run_cnt, run_time_ns) of the recorder with cgroup sock_ops (default) and with
# the fallback tracepoints (--tcp-tracepoints). Needs root and the release binaries that
# `cargo xtask bench` builds. Used for the "unaudited connections" figure in BENCHMARKS.md.
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
A=$root/target/release/auditor; B=$root/target/release/bench
mountpoint -q /sys/fs/cgroup/unified || { echo "needs cgroup v2 at /sys/fs/cgroup/unified" >&2; exit 1; }
CG=/sys/fs/cgroup/unified/aud-unaudited-$$; mkdir -p $CG
old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
echo 1 > /proc/sys/kernel/bpf_stats_enabled
for mode in sockops tracepoints; do
  extra=""; [ $mode = tracepoints ] && extra="--tcp-tracepoints"
  before=$(bpftool prog show -j | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin)))')
  $A record --cgroup $CG $extra --output ${TMPDIR:-/tmp}/unaud.jsonl --lock-file ${TMPDIR:-/tmp}/unaud.lock --ready-file ${TMPDIR:-/tmp}/unaud.ready --log warn 2>${TMPDIR:-/tmp}/unaud.err & pid=$!
  while [ ! -e ${TMPDIR:-/tmp}/unaud.ready ]; do sleep 0.1; done
  snap() { bpftool prog show -j | python3 -c '
import json,sys
before=set(sys.argv[1].split())
for p in json.load(sys.stdin):
    if str(p["id"]) not in before: print(p["name"], p.get("run_cnt",0), p.get("run_time_ns",0))' "$before"; }
  s0=$(snap)
  out=$($B gen connect --server-ns "" --addr 127.0.0.1 --port 17$((RANDOM%900+100)) --secs 3)
  s1=$(snap)
  conns=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["conns"])')
  echo "== $mode: $conns connections from outside the audited cgroup"
  python3 - "$conns" "$s0" "$s1" <<'PY'
import sys
n=float(sys.argv[1]); a={l.split()[0]:list(map(float,l.split()[1:])) for l in sys.argv[2].splitlines()}
b={l.split()[0]:list(map(float,l.split()[1:])) for l in sys.argv[3].splitlines()}
tot=0
for k,(c,t) in sorted(b.items()):
    c0,t0=a.get(k,[0,0]); dc,dt=c-c0,t-t0
    if dc>0: tot+=dt/n; print(f"   {k}: {dc/n:.2f} runs/conn, {dt/dc:.0f} ns/run, {dt/n:.0f} ns/conn")
print(f"   all programs: {tot:.0f} ns/conn")
PY
  kill -INT $pid; wait $pid || true; rm -f ${TMPDIR:-/tmp}/unaud.ready ${TMPDIR:-/tmp}/unaud.lock
done
echo "$old_stats" > /proc/sys/kernel/bpf_stats_enabled
rmdir $CG
