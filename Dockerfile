# prunekit on CPU: the same pinned environment as `make setup` (scripts/setup.sh installs it; the
# pins live only in pyproject.toml). Entrypoint `prunekit`, running as a non-root user.
#   docker build -t prunekit .
#   docker run --rm -v $PWD/artifacts:/work prunekit artifacts --out /work
#   docker run --rm -p 8000:8000 -v $PWD/artifacts:/work prunekit serve /work/NAME --host 0.0.0.0
FROM python:3.11-slim-bookworm

# libgomp: OpenMP for torch and onnxruntime; libtcmalloc: vLLM on CPU runs faster with it preloaded.
# Not pinned to exact versions: Debian drops a superseded version from its archive at each point release, so
# a pin would break the next rebuild; the base image's Debian release (bookworm) fixes the major versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 prunekit

WORKDIR /opt/prunekit
COPY --chown=1000:1000 . .
# The numeric id: a host resolves it without the image's /etc/passwd.
USER 1000

# CPU torch wheels; the default model is fetched at first use (into $PRUNEKIT_HOME), not baked in.
ENV PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_EXTRA_INDEX_URL=https://pypi.org/simple \
    PIP_NO_CACHE_DIR=1 \
    PRUNEKIT_SKIP_MODEL=1 \
    PRUNEKIT_HOME=/home/prunekit/.cache/prunekit
RUN scripts/setup.sh
ENV PATH=/opt/prunekit/.venv/bin:$PATH

ENTRYPOINT ["prunekit"]
CMD ["--help"]
