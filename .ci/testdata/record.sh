#!/usr/bin/env bash
# Records the go test streams that testsum_test.go replays, from the small
# module in rec/ (its tests pass, fail, crash, hang and do not build, on
# purpose). Each file holds stdout and stderr of one go test command; the
# exit status each command had is in testsum_test.go's table. Timestamps are
# dropped so that re-recording changes only what matters.
set -uo pipefail
cd "$(dirname "$0")/rec"
out=..

rec() {
	local name=$1
	shift
	"$@" 2>&1 | sed 's/"Time":"[^"]*",//' >"$out/$name.json"
	echo "$name: exit ${PIPESTATUS[0]}"
}

rec pass go test -count=1 -json ./ok
rec testfail go test -count=1 -json ./ok ./bad
rec buildfail go test -count=1 -json ./ok ./build
rec crash go test -count=1 -json ./crash
rec timeout go test -count=1 -json -timeout 2s ./hang
rec badtestflag go test -count=1 -json ./ok -args -bogus
rec badgoflag go test -count=1 -json -timeout=banana ./ok
rec racenocgo env CGO_ENABLED=0 go test -race -count=1 -json ./ok
rec runnomatch go test -count=1 -json -run TestGone ./ok
rec runpartial go test -count=1 -json -run 'TestA|TestGone' ./ok
rec runsubnomatch go test -count=1 -json -run 'TestA/gone' ./ok
rec runskipped go test -count=1 -json -run 'TestA|TestSkip' ./ok
rec runok go test -count=1 -json -run 'TestA/sub_one|TestA/sub_two' ./ok

cp go.mod go.mod.good
trap 'mv go.mod.good go.mod' EXIT
sed -i 's/^go .*/go 1.99.0/' go.mod
rec newergo env GOTOOLCHAIN=local go test -count=1 -json ./...
cp go.mod.good go.mod
echo "requir example.com/x v1" >>go.mod
rec gomodsyntax go test -count=1 -json ./...
