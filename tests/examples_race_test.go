//go:build race

package tests

// raceBuild: this test binary has the race detector, so binaries the tests
// build get it too (and reuse the packages already compiled for it).
const raceBuild = true
