# syntax=docker/dockerfile:1.7
# One image for every mailstack service; the command picks the service:
#   docker run IMAGE serve mailstore | serve smtp | serve imap | serve pop3
# Settings come only from MAILSTACK_* environment variables (see `mailstack config`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: a wheel of mailstack and of every dependency
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY mailstack/ mailstack/
COPY proto/ proto/
COPY services/ services/
COPY storage/ storage/
COPY message/ message/
RUN pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime: no compiler, no sources, no root
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mailstack" \
      org.opencontainers.image.description="SMTP, IMAP and POP3 frontends over a gRPC mailstore (S3 blobs, Redis push)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILSTACK_DATA_DIR=/data \
    MAILSTACK_BIND=0.0.0.0 \
    MAILSTACK_MAILSTORE_LISTEN=0.0.0.0:50051 \
    MAILSTACK_SMTP_PORT=25 \
    MAILSTACK_SUBMISSION_PORT=587 \
    MAILSTACK_SUBMISSIONS_PORT=465 \
    MAILSTACK_IMAP_PORT=143 \
    MAILSTACK_IMAPS_PORT=993 \
    MAILSTACK_POP3_PORT=110 \
    MAILSTACK_POP3S_PORT=995 \
    MAILSTACK_LMTP_PORT=24 \
    MAILSTACK_LOG_FORMAT=json \
    MAILSTACK_METRICS_PORT=9090

# /grpc/* and /etc/mailstack/grpc*: mount points of the gRPC identity volumes (compose's grpc-init writes
# them, ADR 0009); an empty named volume takes its owner from the image, so the unprivileged user can use it.
RUN groupadd --system --gid 10001 mailstack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin mailstack \
 && install -d -o 10001 -g 10001 -m 0750 /data \
 && install -d -o 10001 -g 10001 -m 0700 /grpc /grpc/ca /grpc/mailstore /grpc/smtp /grpc/imap /grpc/pop3 \
      /grpc/outbound /grpc/admin /etc/mailstack /etc/mailstack/grpc /etc/mailstack/grpc-admin

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels mailstack

USER 10001:10001
WORKDIR /data
# SMTP 25, submissions 465, submission 587, IMAP 143, IMAPS 993, POP3 110, POP3S 995,
# mailstore gRPC 50051 (internal, mTLS) and 50052 (Send API), /metrics /ready /live 9090
EXPOSE 25 465 587 143 993 110 995 24 50051 50052 9090
STOPSIGNAL SIGTERM
# `mailstack healthcheck` asks GET /ready on MAILSTACK_METRICS_PORT, which answers for whatever `mailstack
# serve` runs here; it speaks no mail protocol, so MAILSTACK_PROXY_PROTOCOL=true does not fail it. Kubernetes
# has its own probes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 CMD ["mailstack", "healthcheck"]
ENTRYPOINT ["mailstack"]
CMD ["serve"]
