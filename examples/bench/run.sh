#!/bin/sh
# Runs every workload of issue 8 on abcast (with the raw quic-go fan-out
# baseline) and on GossipSub, alternating the systems, REPS times each, and
# appends the JSON lines to OUT. From the repository root:
#
#	REPS=3 OUT=/tmp/bench.jsonl sh examples/bench/run.sh
#	python3 examples/bench/table.py /tmp/bench.jsonl
set -eu
REPS=${REPS:-3}
OUT=${OUT:-bench.jsonl}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
(cd "$ROOT" && go build -o "$BIN/bench" ./examples/bench)
(cd "$ROOT/examples/gossipbench" && GOFLAGS=-mod=mod go build -o "$BIN/gossipbench" .)
for rep in $(seq "$REPS"); do
	for w in "4 1024 5000" "4 102400 500" "4 1048576 100" "7 102400 500" "13 102400 500"; do
		set -- $w
		args="-nodes $1 -size $2 -count $3 -publishers all -abort-fraction 0.5"
		echo "rep $rep: $args" >&2
		"$BIN/bench" $args -baseline >>"$OUT"
		"$BIN/gossipbench" $args >>"$OUT"
	done
done
