#!/usr/bin/env bash
# Installs the official Lambda Node.js runtime interface client (npm `aws-lambda-ric`) outside the project's
# node_modules, for test/aws/ric.test.ts, which runs the streaming adapter under it against a local Runtime API.
#
# The client's native part builds from sources shipped inside the npm package (curl, aws-lambda-cpp), so it
# needs no network beyond the npm registry, but it needs autoconf, automake, libtool, cmake, make and g++
# (installed with apt-get when missing and running as root). The build takes about two minutes; a finished
# install is reused.
#
#   LAMBDA_RIC_DIR      where to install   (default: ~/.cache/llm-usage-gateway/aws-lambda-ric-<version>)
#   LAMBDA_RIC_VERSION  which version      (default: 4.0.2 on Node >= 22, like the Lambda nodejs22.x/24.x
#                                           runtimes; 3.3.0 on Node 20, which 4.x does not support)
set -euo pipefail

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ -z "${LAMBDA_RIC_VERSION:-}" ]; then
  if [ "$node_major" -ge 22 ]; then LAMBDA_RIC_VERSION=4.0.2; else LAMBDA_RIC_VERSION=3.3.0; fi
fi
dir="${LAMBDA_RIC_DIR:-$HOME/.cache/llm-usage-gateway/aws-lambda-ric-$LAMBDA_RIC_VERSION}"
marker="$dir/.installed-$LAMBDA_RIC_VERSION"

if [ -f "$marker" ] && [ -f "$dir/node_modules/aws-lambda-ric/package.json" ]; then
  echo "aws-lambda-ric $LAMBDA_RIC_VERSION is installed in $dir"
  exit 0
fi

missing=()
for tool in autoconf automake libtoolize cmake make g++; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing build tools for aws-lambda-ric (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq autoconf automake libtool cmake make g++ >/dev/null
  else
    echo "aws-lambda-ric needs: ${missing[*]} (apt-get install autoconf automake libtool cmake make g++)" >&2
    exit 1
  fi
fi

mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{ "name": "lambda-ric-for-tests", "private": true }' >"$dir/package.json"
echo "Building aws-lambda-ric $LAMBDA_RIC_VERSION in $dir (about two minutes)"
(cd "$dir" && npm install --no-audit --no-fund --loglevel=error "aws-lambda-ric@$LAMBDA_RIC_VERSION" >install.log 2>&1) || {
  tail -40 "$dir/install.log" >&2
  exit 1
}
touch "$marker"
echo "aws-lambda-ric $LAMBDA_RIC_VERSION is installed in $dir"
