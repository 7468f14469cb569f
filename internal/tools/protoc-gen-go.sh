#!/bin/sh
# Runs the protoc-gen-go pinned by go.mod's tool line, so generated code does
# not depend on whatever plugin happens to be on PATH.
exec go tool protoc-gen-go "$@"
