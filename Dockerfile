# inkwell-serve on an NVIDIA GPU: a CUDA runtime image with a CUDA build of torch and Inkwell installed.
#
#   docker build -t inkwell .
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro inkwell \
#       --model llada=/models/LLaDA-8B-Instruct --model llada-int4=/models/llada-8b-int4
#
# With no arguments it serves the models embedded in the package (inkwell-tiny and inkwell-tiny-int4, when
# engine/assets/ held them at build time). Checkpoints are mounted under /models; nothing is downloaded at
# start (the Hugging Face libraries run offline). Arguments after the image name go to inkwell-serve; the
# HEALTHCHECK asks port 8000, so keep the default --port. See README, "Docker".

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# torch's CUDA wheels carry their CUDA libraries; keep the index's CUDA version in line with CUDA_IMAGE's.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# The distribution's python3 and venv, at the versions of the pinned base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY engine/ engine/
COPY kernels/ kernels/
COPY quantize/ quantize/
COPY server/ server/
# A regular (not editable) install: the image needs none of the source tree at run time.
RUN pip install --no-cache-dir -c requirements/constraints.txt .

FROM ${CUDA_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 inkwell \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin inkwell \
    && mkdir /models \
    && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# Numeric, so that runtimes can check the user is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/inkwell
VOLUME ["/models"]
EXPOSE 8000
# /health answers 503 until every model is loaded and warmed; an 8B checkpoint takes minutes to load.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5)"]
ENTRYPOINT ["inkwell-serve", "--host", "0.0.0.0", "--device", "cuda"]
CMD []
