#!/usr/bin/env bash
# Builds the two protoc plugins Swift code generation needs, once, into
# tools/bin (git-ignored): protoc-gen-swift (apple/swift-protobuf 1.39.0) and
# protoc-gen-grpc-swift-2 (grpc/grpc-swift-protobuf 2.4.1), from the same
# package versions Package.swift depends on. About a minute each on 2 cores.
# Not part of the build: scripts/gen-proto-swift.sh calls it when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p tools/bin tools/src
build() { # url tag product
  local name; name=$(basename "$1")
  if [ -x "tools/bin/$3" ]; then return; fi
  if [ ! -d "tools/src/$name" ]; then
    git clone -q --depth 1 --branch "$2" "$1" "tools/src/$name"
  fi
  (cd "tools/src/$name" && swift build -c release --product "$3" >/dev/null)
  cp "tools/src/$name/.build/release/$3" "$root/tools/bin/"
  echo "built tools/bin/$3"
}
build https://github.com/apple/swift-protobuf 1.39.0 protoc-gen-swift
build https://github.com/grpc/grpc-swift-protobuf 2.4.1 protoc-gen-grpc-swift-2
