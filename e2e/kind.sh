#!/usr/bin/env bash
# Shoal end to end on a local kind cluster (needs docker, kind, kubectl, helm; network for the images'
# base layers and pip). Not run by CI here.
#
#   e2e/kind.sh            create the cluster (if missing), build + load images, install the chart,
#                          apply crds/examples/local/, wait for Ready, send one chat request
#   E2E_DELETE=1 e2e/kind.sh  also delete the cluster at the end (default: keep it)
#   CLUSTER, NS, TAG, PORT, TIMEOUT override the defaults below
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CLUSTER:-shoal}"
NS="${NS:-shoal-demo}"
TAG="${TAG:-e2e}"
PORT="${PORT:-18080}"
TIMEOUT="${TIMEOUT:-15m}"

need() { command -v "$1" >/dev/null || { echo "missing: $1" >&2; exit 1; }; }
for tool in docker kind kubectl helm curl; do need "$tool"; done
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

step "cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "images (tag $TAG; the engine image is the CPU build)"
docker build -f docker/engine.Dockerfile -t "shoal-engine:$TAG" \
  --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
docker build -f docker/router.Dockerfile -t "shoal-router:$TAG" .
docker build -f docker/operator.Dockerfile -t "shoal-operator:$TAG" .
for image in shoal-engine shoal-router shoal-operator; do kind load docker-image "$image:$TAG" --name "$CLUSTER"; done

step "chart"
helm upgrade --install shoal helm/shoal --namespace shoal-system --create-namespace --wait \
  --set image.pullPolicy=Never --set "rbac.secretNamespaces={$NS}" \
  --set image.operator.repository=shoal-operator --set image.operator.tag="$TAG" \
  --set image.engine.repository=shoal-engine --set image.engine.tag="$TAG" \
  --set image.router.repository=shoal-router --set image.router.tag="$TAG"

step "examples in namespace $NS"
kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
kubectl apply -n "$NS" -f crds/examples/local/
kubectl wait -n "$NS" --for=condition=Ready modelpool/smollm2 --timeout="$TIMEOUT"
kubectl wait -n "$NS" --for=condition=Ready router/local --timeout="$TIMEOUT"
kubectl get -n "$NS" modelpools,routers,deployments,services,pods

step "a request through the router"
kubectl port-forward -n "$NS" svc/local-router "$PORT:80" >/dev/null &
FORWARD=$!
cleanup() {
  kill "$FORWARD" 2>/dev/null || true
  if [[ "${E2E_DELETE:-0}" == 1 ]]; then kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT
for _ in $(seq 30); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 1; done
ANSWER="$(curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "smollm2-135m-instruct", "max_tokens": 32, "temperature": 0,
       "messages": [{"role": "user", "content": "What is the capital of France?"}]}')"
echo "$ANSWER"
echo "$ANSWER" | grep -qi paris && echo "e2e: OK" || { echo "e2e: unexpected answer" >&2; exit 1; }
