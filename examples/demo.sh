#!/usr/bin/env bash
# `make demo`: a real RecTrainJob, end to end, on this machine.
#   local control plane + node agent -> CRD -> operator -> 2 rank pods training for real -> Succeeded.
# A second run reuses the cluster and the operator, and trains the job again from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE="$ROOT/.rectrain"
JOB=local-criteo
export KUBECONFIG="$STATE/kubeconfig"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Local cluster (control plane + node agent)"
rectrain-local up

step "RecTrainJob CRD"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/rectrainjobs.rectrain.io >/dev/null
echo "crd/rectrainjobs.rectrain.io established"

step "Operator"
operator_alive() {
  [ -f "$STATE/operator.pid" ] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null \
    && tr '\0' ' ' < "/proc/$(cat "$STATE/operator.pid")/cmdline" | grep -q rectrain-operator
}
if operator_alive; then
  echo "rectrain-operator already running (pid $(cat "$STATE/operator.pid"))"
else
  setsid rectrain-operator --metrics-port 0 --liveness-endpoint "" >>"$STATE/operator.log" 2>&1 < /dev/null &
  echo $! > "$STATE/operator.pid"
  echo "rectrain-operator started (pid $!, log $STATE/operator.log)"
fi

step "Job $JOB (2 ranks, CPU, gloo, bf16, planted synthetic Criteo-shaped data)"
kubectl delete rtj "$JOB" --ignore-not-found --cascade=foreground --wait=true >/dev/null
kubectl delete pvc "$JOB-checkpoints" --ignore-not-found --wait=true >/dev/null
kubectl apply -f examples/local-criteo.yaml
deadline=$((SECONDS + 60))
until kubectl get pods -l "rectrain.io/job-name=$JOB" -o name 2>/dev/null | grep -q pod/; do
  [ $SECONDS -lt $deadline ] || { echo "no rank pods after 60s; operator log: $STATE/operator.log" >&2; exit 1; }
  sleep 0.5
done
kubectl get rtj "$JOB"
kubectl get pods -l "rectrain.io/job-name=$JOB" -o wide

step "Training (progress comes from the job's status.progress, written by rank 0)"
set +e
kubectl-rectrain watch "$JOB" --timeout 1200
result=$?
set -e
kubectl get rtj "$JOB"

step "Result"
auc=$(kubectl get rtj "$JOB" -o jsonpath='{.status.metrics.auc}')
phase=$(kubectl get rtj "$JOB" -o jsonpath='{.status.phase}')
volume=$(kubectl get pvc "$JOB-checkpoints" -o jsonpath='{.spec.volumeName}')
host_path=$(kubectl get pv "$volume" -o jsonpath='{.spec.hostPath.path}' 2>/dev/null || true)
echo "phase: $phase"
echo "final AUC: ${auc:-n/a}"
echo "checkpoints: PVC $JOB-checkpoints -> $host_path"
ls "$host_path" 2>/dev/null | sed 's/^/  /' || true
cat <<MSG

Look around:
  export KUBECONFIG=$KUBECONFIG PATH=$ROOT/.venv/bin:\$PATH   # kubectl, helm, kubectl-rectrain, rectrain-local
  kubectl get rtj $JOB -o yaml            # status.progress, status.metrics, conditions
  kubectl describe rtj $JOB               # events
  kubectl get pods -l rectrain.io/job-name=$JOB
  kubectl logs $JOB-0-a0                  # rank 0's output (pod names: <job>-<rank>-a<attempt>)
  kubectl rectrain describe $JOB          # phase, restarts vs preemptions, progress, events
  rectrain-local reclaim <pod>            # simulate a spot reclaim
  make demo-down                          # stop the operator and the cluster
MSG
exit $result
