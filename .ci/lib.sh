# Shared by .ci/run and .ci/test (sourced, not run). Every helper here
# either succeeds or stops the run with a message saying what is missing
# and why; nothing is retried or ignored.

# Steps carry the time since the first script of the run started, so that
# the log shows where CI's time budget goes.
export CI_START="${CI_START:-$(date +%s)}"
step() {
	local t=$(($(date +%s) - CI_START))
	printf '\n==> [%dm%02ds] %s\n' $((t / 60)) $((t % 60)) "$*" >&2
}

die() {
	printf '.ci/%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

# go_key prints a sortable key for a Go version as go.mod or
# `go env GOVERSION` write it (without the "go" prefix), in Go's own order:
# 1.21 < 1.21rc1 < 1.21.0 < 1.21.1.
go_key() {
	local kind num
	[[ $1 =~ ^([0-9]+)\.([0-9]+)(\.([0-9]+)|(beta|rc)([0-9]+))?$ ]] || return 1
	if [ -n "${BASH_REMATCH[4]}" ]; then
		kind=3 num=${BASH_REMATCH[4]}
	elif [ "${BASH_REMATCH[5]}" = rc ]; then
		kind=2 num=${BASH_REMATCH[6]}
	elif [ "${BASH_REMATCH[5]}" = beta ]; then
		kind=1 num=${BASH_REMATCH[6]}
	else
		kind=0 num=0
	fi
	printf '%05d.%05d.%d.%05d\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$kind" "$num"
}

# use_go finds the Go toolchain, pins it (GOTOOLCHAIN=local, unless the
# caller chose otherwise: a silent download of another toolchain would make
# "which Go ran the tests" depend on the network), and checks go.mod against
# it before anything else uses it.
use_go() {
	if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
		export PATH="$PATH:/usr/local/go/bin"
	fi
	local need
	need="$(awk '$1 == "go" { print $2; exit }' go.mod)"
	[ -n "$need" ] || die "go.mod has no 'go' line"
	command -v go >/dev/null 2>&1 || die "no Go toolchain found; go.mod needs go $need or newer (https://go.dev/dl/)"
	export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
	local have
	# Asked outside the module, so that a go.mod go cannot read does not
	# hide the version.
	have="$(cd / && go env GOVERSION)" || die "'go env GOVERSION' failed"
	if [ "$GOTOOLCHAIN" = local ]; then
		local need_key have_key
		need_key="$(go_key "$need")" || die "go.mod's go line '$need' is not a Go version"
		if have_key="$(go_key "${have#go}")"; then
			if [[ $have_key < $need_key ]]; then
				die "go.mod needs go $need or newer, but $(command -v go) is $have; install Go $need or newer (https://go.dev/dl/), or set GOTOOLCHAIN=auto to let go download it"
			fi
		else
			echo "${0##*/}: cannot compare toolchain version '$have' with go.mod's $need; going on" >&2
		fi
	fi
	# go.mod must also parse: otherwise every go command below fails with
	# the same error, and go test would report it as no test output at all.
	local modErr
	if ! modErr="$(go mod edit -json 2>&1 >/dev/null)"; then
		die "go.mod does not parse: $modErr"
	fi
	echo "$have (GOTOOLCHAIN=$GOTOOLCHAIN); go.mod needs go $need" >&2
}

# need CMD PACKAGE... WHY: when CMD is not on PATH, install the Debian
# packages (as root, non-interactively) and check that CMD is there now.
need() {
	local cmd=$1 why=${!#}
	local pkgs=("${@:2:$#-2}")
	command -v "$cmd" >/dev/null 2>&1 && return 0
	step "installing ${pkgs[*]} ($cmd: $why)"
	command -v apt-get >/dev/null 2>&1 || die "$cmd is missing ($why) and there is no apt-get to install ${pkgs[*]}; install them by hand"
	[ "$(id -u)" = 0 ] || die "$cmd is missing ($why); installing ${pkgs[*]} needs root: run as root or install them by hand"
	apt_install "${pkgs[@]}"
	command -v "$cmd" >/dev/null 2>&1 || die "installed ${pkgs[*]}, but $cmd is still not on PATH ($why)"
}

apt_updated=
apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	if [ -z "$apt_updated" ]; then
		apt-get update -qq || die "apt-get update failed (exit $?); cannot install $*"
		apt_updated=1
	fi
	apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@" || die "apt-get install $* failed (exit $?)"
}

# pick_seed sets and exports ABCAST_SEED, the run's one rotating seed, and
# prints it with the command that repeats the run: derived from the commit
# (a re-run of a commit repeats its seeds, each new commit tries others),
# from the date outside git, or taken from the environment.
pick_seed() {
	local commit
	if [ -z "${ABCAST_SEED_FROM:-}" ]; then
		if [ -n "${ABCAST_SEED:-}" ]; then
			ABCAST_SEED_FROM="ABCAST_SEED from the environment"
		elif commit="$(git rev-parse --short=12 HEAD 2>/dev/null)"; then
			ABCAST_SEED=$((16#${commit:0:8} % 900000 + 100000))
			ABCAST_SEED_FROM="commit $commit"
		else
			ABCAST_SEED=$(($(date -u +%Y%m%d) % 900000 + 100000))
			ABCAST_SEED_FROM="date $(date -u +%F)"
		fi
		export ABCAST_SEED ABCAST_SEED_FROM
	fi
	[[ $ABCAST_SEED =~ ^[0-9]+$ ]] || die "ABCAST_SEED=$ABCAST_SEED is not a number"
	step "seed $ABCAST_SEED ($ABCAST_SEED_FROM)"
	echo "every randomized test uses it; 'ABCAST_SEED=$ABCAST_SEED bash .ci/test' repeats this run's tests, and each failure below prints its own replay command" >&2
}
