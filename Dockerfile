# The image CI jobs run `ps` in (GitLab CI `image:`, Jenkins `agent { docker { image ... } }`).
#
#   docker build -t pipeline-steps .                                   # installs from PyPI
#   pip wheel . -w wheels/ && docker build --build-arg WHEELS=wheels -t pipeline-steps .   # offline
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim ...        # own base
#
# BASE_IMAGE needs python3 (3.11+) with the venv module and /bin/sh.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
LABEL pipeline-steps.stage=build
# empty: pip install . from the index; a directory of the build context holding wheels: no network at all
ARG WHEELS=
COPY . /src
RUN python3 -m venv /opt/pipeline-steps \
 && if [ -n "$WHEELS" ]; then \
      /opt/pipeline-steps/bin/pip install --no-cache-dir --no-index --find-links "/src/$WHEELS" pipeline-steps; \
    else \
      /opt/pipeline-steps/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/pipeline-steps/bin/ps --version

FROM ${BASE_IMAGE}
COPY --from=build /opt/pipeline-steps /opt/pipeline-steps
ENV PATH=/opt/pipeline-steps/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="pipeline-steps" \
      org.opencontainers.image.description="ps: small, idempotent deployment steps for Jenkins and GitLab CI"
WORKDIR /workspace
CMD ["ps", "--help"]
