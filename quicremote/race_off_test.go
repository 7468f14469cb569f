//go:build !race

package quicremote

// raceEnabled: the race detector changes what allocations cost.
const raceEnabled = false
