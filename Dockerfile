# nfx on a GPU box. Build: docker build -t nfx .
# Run:  docker run --gpus all --rm -v "$PWD/data:/data" -v "$PWD/runs:/runs" nfx \
#         finetune /data --arch dm_nfnet_f1 --accum 8 --out /runs
# The base image brings CUDA-enabled PyTorch; pip keeps that torch (nfx only states a minimum).
# Override with --build-arg BASE=... to match your driver (not built on the dev machines: no Docker engine).
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    NFX_CACHE_DIR=/cache

WORKDIR /opt/nfx
COPY pyproject.toml README.md ./
COPY nfx ./nfx
RUN pip install . && nfx --help >/dev/null

# Non-root user; /runs and /cache are the writable mount points.
RUN useradd --create-home --uid 1000 nfx && mkdir -p /runs /cache && chown nfx /runs /cache
USER nfx
WORKDIR /runs
ENTRYPOINT ["nfx"]
CMD ["--help"]
