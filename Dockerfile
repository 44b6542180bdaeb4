# syncd container image.
#
#   docker build -t syncd .
#   docker run --rm \
#     -v /etc/syncd/syncd.toml:/etc/syncd/syncd.toml:ro \
#     -v /runpod-volume:/runpod-volume \
#     -e SYNCD_DATACENTER=EU-RO-1 -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     -p 127.0.0.1:9847:9847 syncd
#
# Nothing in the image is site-specific: the config file is mounted at $SYNCD_CONFIG, every field
# can be overridden with SYNCD_* variables, and credentials come from the standard AWS chain
# (AWS_* variables, or a mounted ~/.aws at /home/syncd/.aws with AWS_PROFILE or [s3].profile).
# The process runs as UID/GID 10001 (numeric, so Kubernetes' runAsNonRoot can check it); the
# volumes it writes must be writable by that user (e.g. fsGroup: 10001).
#
# BASE must provide python3 (>= 3.11) with the venv module. Both stages use it, so the venv's
# interpreter path (/usr/local/bin/python3 in the official image, /usr/bin/python3 in Debian's)
# is the same at build time and at run time.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# Only what the package build reads (.dockerignore keeps the context to these as well).
COPY pyproject.toml README.md /src/
COPY syncd/ /src/syncd/
# One layer: the venv and the install (layers are whole copies under some storage drivers).
# The project comes from the local tree; its dependencies follow pyproject.toml's ranges.
RUN python3 -m venv /opt/syncd \
    && /opt/syncd/bin/python3 -m pip install --no-cache-dir --disable-pip-version-check /src

FROM ${BASE}
RUN groupadd --gid 10001 syncd \
    && useradd --no-log-init --uid 10001 --gid 10001 \
        --create-home --home-dir /home/syncd --shell /usr/sbin/nologin syncd
COPY --from=build /opt/syncd /opt/syncd

ENV PATH=/opt/syncd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNCD_CONFIG=/etc/syncd/syncd.toml \
    SYNCD_HTTP__LISTEN=0.0.0.0:9847

USER 10001:10001
WORKDIR /home/syncd
EXPOSE 9847
# The slim image has no curl: syncd asks its own /healthz on the configured address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["syncd", "health"]
ENTRYPOINT ["syncd"]
CMD ["run"]
