# syntax=docker/dockerfile:1
# The project image, after kedro-docker's Dockerfile.simple: requirements in a layer of their own,
# a non-root user kedro_docker (ARG KEDRO_UID/KEDRO_GID), WORKDIR /home/kedro_docker, `kedro run`.
# It holds the project wheel (pip wheel --no-deps .), conf/base and conf/test, never data/ nor
# conf/local: mount them at run time (README, "Containers"). .dockerignore keeps them out of the
# build context too, so patient data cannot reach an image even by a careless COPY.
#
#   podman build -t osteo-pipeline .        (or docker build; `make image` on a machine without a
#                                            registry: it builds a Debian base first, docker/base-image.sh)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
# The requirements first (pyproject's dependencies at constraints.txt's exact versions): this layer
# is rebuilt only when pyproject.toml or constraints.txt change, not when the code does. The pip
# cache mount keeps downloads (TensorFlow: ~260 MB) between builds on one machine.
COPY pyproject.toml constraints.txt /tmp/project/
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/project/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt -c /tmp/project/constraints.txt
# The project itself, as a wheel without its dependencies (they are all in the layer above).
FROM builder AS wheel
COPY README.md /tmp/project/
COPY src /tmp/project/src
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip wheel --no-deps -w /tmp/wheel /tmp/project

FROM ${BASE_IMAGE} AS runtime
ARG KEDRO_UID=999
ARG KEDRO_GID=0
RUN groupadd -f -g ${KEDRO_GID} kedro_group \
 && useradd -m -d /home/kedro_docker -s /bin/bash -g ${KEDRO_GID} -u ${KEDRO_UID} kedro_docker
# The dependencies' layer (~2.4 GB) stays cached while only the code changes; the wheel is a layer
# of its own, a few hundred kB.
COPY --from=builder /opt/venv /opt/venv
COPY --from=wheel /tmp/wheel /tmp/wheel
RUN /opt/venv/bin/pip install --no-deps --no-compile /tmp/wheel/osteo_pipeline-*.whl && rm -rf /tmp/wheel
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 \
    DO_NOT_TRACK=1 KEDRO_DISABLE_TELEMETRY=true TF_CPP_MIN_LOG_LEVEL=2 MPLCONFIGDIR=/tmp/matplotlib \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /home/kedro_docker
USER kedro_docker
# What `kedro run` needs beside the installed package: pyproject.toml (the project's metadata),
# conf/ without local/, an empty src/ (Kedro checks it exists; the code runs from the wheel), and
# the data layer folders, empty: data/ is a volume.
COPY --chown=${KEDRO_UID}:${KEDRO_GID} pyproject.toml .telemetry ./
COPY --chown=${KEDRO_UID}:${KEDRO_GID} conf ./conf
RUN mkdir -p src conf/local data/01_raw data/02_intermediate data/05_model_input data/06_models data/08_reporting

EXPOSE 8888
CMD ["kedro", "run"]
