#!/bin/sh
# Measures two builds of abcast side by side (issue 15): for each workload,
# BEFORE, then AFTER with the raw quic-go fan-out baseline, and for the
# 1 KiB workloads GossipSub, interleaved, REPS times; JSON lines (with a
# line naming the workload and the load average before it) to OUT. From
# the repository root, with BEFORE built from the older commit:
#
#	git worktree add /tmp/before <commit> && (cd /tmp/before && go build -o /tmp/bench-before ./examples/bench)
#	BEFORE=/tmp/bench-before REPS=3 OUT=/tmp/compare.jsonl sh examples/bench/compare.sh
#	python3 examples/bench/compare.py /tmp/compare.jsonl
#
# BEFORE must understand -label (examples/bench of issue 15 or later; copy
# this directory over an older tree).
set -u
REPS=${REPS:-3}
OUT=${OUT:-compare.jsonl}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
(cd "$ROOT" && go build -o "$BIN/bench" ./examples/bench)
(cd "$ROOT/examples/gossipbench" && GOFLAGS=-mod=mod go build -o "$BIN/gossipbench" .)
AFTER=${AFTER:-$BIN/bench}
mark() { echo "{\"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"rep\": $rep, \"args\": \"$args\"}" >>"$OUT"; echo "rep $rep: $args" >&2; }
for rep in $(seq "$REPS"); do
	for w in "4 102400 500" "7 102400 250" "13 102400 120" "4 1048576 50" "7 1048576 25" "13 1048576 12"; do
		set -- $w
		for pub in one all; do
			args="-nodes $1 -size $2 -count $3 -publishers $pub"
			mark
			"$BEFORE" -label before $args >>"$OUT"
			"$AFTER" -label after $args -baseline >>"$OUT"
		done
	done
	for w in "4 1024 5000 0" "13 1024 5000 0" "4 1024 2000 250"; do
		set -- $w
		args="-nodes $1 -size $2 -count $3 -rate $4 -publishers all"
		mark
		"$BEFORE" -label before $args >>"$OUT"
		"$AFTER" -label after $args >>"$OUT"
		"$BIN/gossipbench" $args >>"$OUT"
	done
done
