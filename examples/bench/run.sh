#!/bin/sh
# Reproduces the tables and plots of issue 15 in internal/docs/BENCHMARKS.md
# with one command, from the repository root:
#
#	sh examples/bench/run.sh
#
# It builds the drivers, then, REPS times, interleaving the systems per
# workload:
#   - goodput: 100 KiB and 1 MiB at N=4, 7, 13, one publisher and all
#     publishing: abcast with the raw quic-go fan-out baseline (-baseline),
#     then GossipSub;
#   - small artifacts: 1 KiB × 5000 unpaced at N=4 and 13, and paced
#     (-count 2000 -rate 250, 1,000/s in total) at N=4: abcast, GossipSub;
#   - aborts: issue 8's workloads at -abort-fraction 0.5: abcast, GossipSub;
# then examples/remotebench -json (-reps REPS) and examples/scalebench
# -nodes 13,31,51, appending every JSON line to OUT, each workload after a
# line naming it ({"load", "rep", "args"}, as compare.sh writes). Last,
# table.py writes the tables to PLOTS/tables.md (and prints them) and
# plot.py the SVGs to PLOTS.
#
# Knobs (environment):
#   REPS    repetitions of each workload (3; QUICK: 1)
#   OUT     JSON lines file, appended to (bench.jsonl; QUICK: a new file in /tmp)
#   PLOTS   directory for the SVGs and tables.md (internal/docs/plots;
#           QUICK: OUT without .jsonl, plus -plots)
#   QUICK=1 tiny counts at N=4 only, a short remotebench and a 4-node
#           scalebench, after plot.py -selftest: checks that the script
#           works, in a minute or two; its numbers mean nothing
#   BEFORE  an older examples/bench binary (see compare.sh): also run it
#           with -label before on the goodput and small-artifact workloads
#           (this build then has -label after) and add compare.py's
#           before/after tables to tables.md
#   SCALE_NODES  scalebench's -nodes (13,31,51)
#   TIMEOUT seconds one program run may take (3600; QUICK: 300); then it
#           gets SIGQUIT (a Go program prints its goroutines and exits)
#           and counts as failed, so a hung run cannot stall the rest
#
# A run that fails is reported at the end (and the exit status is 1); the
# others go on. The full run is long (every workload REPS times, then
# scalebench up to N=51, which needs several GiB): run it on a quiet
# machine, the numbers depend on it. QUICK=1 took about 30 s on the
# project's 2-core machine with the Go build cache warm.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/examples/bench
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	REPS=${REPS:-1}
	TIMEOUT=${TIMEOUT:-300}
	OUT=${OUT:-$(mktemp --suffix=.jsonl /tmp/abcast-bench-quick.XXXXXX)}
	PLOTS=${PLOTS:-${OUT%.jsonl}-plots}
else
	REPS=${REPS:-3}
	TIMEOUT=${TIMEOUT:-3600}
	OUT=${OUT:-bench.jsonl}
	PLOTS=${PLOTS:-$ROOT/internal/docs/plots}
fi
BEFORE=${BEFORE:-}
SCALE_NODES=${SCALE_NODES:-13,31,51}
START=$(date +%s)
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT

if [ "$QUICK" = 1 ]; then
	python3 "$HERE/plot.py" -selftest || exit 1
fi
echo "building the drivers" >&2
(cd "$ROOT" && go build -o "$BIN/bench" ./examples/bench && go build -o "$BIN/remotebench" ./examples/remotebench &&
	go build -o "$BIN/scalebench" ./examples/scalebench) || exit 1
(cd "$ROOT/examples/gossipbench" && GOFLAGS=-mod=mod go build -o "$BIN/gossipbench" .) || exit 1

failed=""
# run appends the command's stdout to OUT and notes a failure. timeout
# signals its whole process group (remotebench's server child too).
run() {
	timeout --signal=QUIT --kill-after=30 "$TIMEOUT" "$@" >>"$OUT" || {
		echo "run.sh: FAILED: $*" >&2
		failed="$failed
	$*"
	}
}
mark() {
	echo "{\"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"rep\": $rep, \"args\": \"$args\"}" >>"$OUT"
	echo "rep $rep: $args" >&2
}
after=""
if [ -n "$BEFORE" ]; then after="-label after"; fi
before() {
	if [ -n "$BEFORE" ]; then run "$BEFORE" -label before $args; fi
}

if [ "$QUICK" = 1 ]; then
	GOODPUT="4 102400 20|4 1048576 4"
	SMALL="4 1024 200 0|4 1024 100 250"
	ABORT="4 1024 200|4 102400 20"
	REMOTE="-n 20000 -round 5000 -rt 200"
	SCALE="-nodes 4 -phase 1s -large 1000000 -lifetime 2s"
else
	# Counts as in compare.sh: about the same bytes delivered at every N.
	GOODPUT="4 102400 500|7 102400 250|13 102400 120|4 1048576 50|7 1048576 25|13 1048576 12"
	SMALL="4 1024 5000 0|13 1024 5000 0|4 1024 2000 250"
	ABORT="4 1024 5000|4 102400 500|4 1048576 100|7 102400 500|13 102400 500"
	REMOTE="-n 1000000 -rt 3000"
	SCALE="-nodes $SCALE_NODES"
fi

IFS_SAVED=$IFS
for rep in $(seq "$REPS"); do
	IFS="|"
	for w in $GOODPUT; do
		IFS=$IFS_SAVED
		set -- $w
		for pub in one all; do
			args="-nodes $1 -size $2 -count $3 -publishers $pub"
			mark
			before
			run "$BIN/bench" $after $args -baseline
			run "$BIN/gossipbench" $args
		done
	done
	IFS="|"
	for w in $SMALL; do
		IFS=$IFS_SAVED
		set -- $w
		args="-nodes $1 -size $2 -count $3 -rate $4 -publishers all"
		mark
		before
		run "$BIN/bench" $after $args
		run "$BIN/gossipbench" $args
	done
	IFS="|"
	for w in $ABORT; do
		IFS=$IFS_SAVED
		set -- $w
		args="-nodes $1 -size $2 -count $3 -publishers all -abort-fraction 0.5"
		mark
		run "$BIN/bench" $after $args
		run "$BIN/gossipbench" $args
	done
	IFS=$IFS_SAVED
done
program() {
	echo "{\"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"rep\": 1, \"program\": \"$1\", \"args\": \"$2\"}" >>"$OUT"
	echo "$1 $2" >&2
}
program remotebench "$REMOTE -reps $REPS -json"
run "$BIN/remotebench" $REMOTE -reps "$REPS" -json
program scalebench "$SCALE"
run "$BIN/scalebench" $SCALE

mkdir -p "$PLOTS"
{
	python3 "$HERE/table.py" "$OUT"
	if [ -n "$BEFORE" ]; then python3 "$HERE/compare.py" "$OUT"; fi
} >"$PLOTS/tables.md" || failed="$failed
	table.py"
cat "$PLOTS/tables.md"
python3 "$HERE/plot.py" -o "$PLOTS" "$OUT" || failed="$failed
	plot.py"
echo "JSON lines: $OUT; tables and plots: $PLOTS; $(($(date +%s) - START)) s" >&2
if [ -n "$failed" ]; then
	echo "run.sh: these failed:$failed" >&2
	exit 1
fi
