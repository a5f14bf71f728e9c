#!/usr/bin/env bash
# The serving image of a registered model: `mlflow models build-docker`'s equivalent without a
# Docker daemon. `mlflow models generate-dockerfile` writes the Dockerfile MLflow would build (FROM
# python:<the model's Python>-slim, nginx, mlflow, the model's own requirements.txt, the model
# under /opt/ml/model, MLflow's serving entry point on port 8080); podman builds it.
# Usage: docker/serve-image.sh MODEL_URI IMAGE [BASE_IMAGE]
#   MODEL_URI: e.g. models:/osteo-cnn21@champion (MLFLOW_TRACKING_URI names the store)
#   BASE_IMAGE: replaces the generated FROM python:3.11*-slim (a machine without a registry uses
#     the Debian-built localhost/osteo-base:bookworm, docker/base-image.sh); empty: MLflow's own.
set -euo pipefail
MODEL_URI=${1:?model URI, e.g. models:/osteo-cnn21@champion}
IMAGE=${2:?image name}
BASE_IMAGE=${3:-}
MLFLOW=${MLFLOW:-mlflow}
PODMAN=${PODMAN:-podman}
CONTEXT=$(mktemp -d /var/tmp/osteo-serve.XXXXXX)
trap 'rm -rf "$CONTEXT"' EXIT
"$MLFLOW" models generate-dockerfile -m "$MODEL_URI" -d "$CONTEXT" --env-manager local
FROM=$(sed -n 's/^FROM //p' "$CONTEXT/Dockerfile")
echo "serve-image: MLflow generated FROM $FROM"
if [ -n "$BASE_IMAGE" ]; then
  case "$FROM" in
    # Debian's python3 refuses pip installs into the system (PEP 668) and has no pip: a venv on
    # PATH stands for the python image's /usr/local (python, pip), as MLflow's steps expect.
    python:3.11*) sed -i "s|^FROM .*|FROM $BASE_IMAGE\nRUN python3 -m venv /opt/python\nENV PATH=/opt/python/bin:\$PATH|" \
                    "$CONTEXT/Dockerfile"
                  # The model's python_env pins a PyPI pip that trusts its own certifi bundle only; the
                  # installs it runs get the system's CA store (a site's egress proxy CA, base-image.sh).
                  sed -i 's|^RUN python -c|RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt python -c|' "$CONTEXT/Dockerfile"
                  echo "serve-image: FROM $BASE_IMAGE instead (the same Python, from Debian packages)" ;;
    *) echo "serve-image: unexpected generated base $FROM; not replacing it with $BASE_IMAGE" >&2; exit 1 ;;
  esac
fi
# The model's pip installs reuse one pip cache across builds on this machine (TensorFlow ~260 MB).
sed -i 's|^RUN pip install|RUN --mount=type=cache,target=/root/.cache/pip pip install|; s|^RUN \(PIP_CERT=[^ ]* \)\?python -c|RUN --mount=type=cache,target=/root/.cache/pip \1python -c|' \
  "$CONTEXT/Dockerfile"
$PODMAN build -t "$IMAGE" "$CONTEXT"
