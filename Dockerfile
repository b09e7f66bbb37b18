# syntax=docker/dockerfile:1
# nfx on a GPU box.
#   docker build -t nfx .                              (BuildKit: the default builder of Docker >= 23)
#   docker run --gpus all --rm -v "$PWD/data:/data:ro" -v "$PWD/runs:/runs" nfx \
#       finetune /data --arch dm_nfnet_f1 --accum 8
# The base image brings CUDA-enabled PyTorch; pip keeps that torch (nfx only states a minimum).
# Pin another base to match your driver: --build-arg BASE=pytorch/pytorch:<tag>
# hadolint-clean (tests/test_docker.py). Built and run for real on a CPU base by docker/smoke.sh (buildah).
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# ---- build stage: only the nfx wheel (the project is pure Python) ----
FROM ${BASE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nfx ./nfx
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- final image: the base + nfx and its runtime dependencies, one layer, no wheel kept ----
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    NFX_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface \
    HOME=/cache \
    MPLCONFIGDIR=/cache/matplotlib
# The DICOM decoders (pylibjpeg + libjpeg/openjpeg/rle, pyjpegls) are runtime dependencies of
# the package: the same install as the README's `pip install -e .`, without the dev extras.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install /wheels/nfx-*.whl \
    && nfx --help >/dev/null \
    && python -c "import pylibjpeg, libjpeg, openjpeg, rle, jpeg_ls" \
    && mkdir -p /data /runs /cache \
    && chown 1000:1000 /runs /cache

# Non-root (numeric uid, so it resolves on any host); /runs and /cache are the writable mounts,
# /data is read-only input. HOME and MPLCONFIGDIR point into /cache: uid 1000 has no home, and
# matplotlib (the report's plots) would otherwise warn and write its cache to /tmp.
USER 1000:1000
VOLUME ["/data", "/runs", "/cache"]
# cwd /: the default --out (runs) is the /runs volume
WORKDIR /
ENTRYPOINT ["nfx"]
CMD ["--help"]
