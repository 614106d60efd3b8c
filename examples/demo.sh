#!/usr/bin/env bash
# `make demo`: start the local cluster and show it works. (The local-node issue extends this to a
# full training job.)
set -euo pipefail
cd "$(dirname "$0")/.."
rectrain-local up
export KUBECONFIG="$PWD/.rectrain/kubeconfig"
kubectl get ns
