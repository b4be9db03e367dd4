# syntax=docker/dockerfile:1
# Fracture screening image: one image for worker, watcher, dashboard and migrations.
#   docker build -t fracture-screening .                            # CUDA torch (default)
#   docker build -t fracture-screening:cpu --build-arg TORCH_VARIANT=cpu .
# Without a registry (base from debootstrap, local wheels): deploy/podman/build-local-images.sh.
# The shipped models (model/weights/fracture.pt, and fracture-single-pass.pt beside it) must exist
# when building; they end up in /opt/fracture/model/ (FRACTURE_MODEL_PATH selects one; default
# fracture.pt). The bench's sample images travel in the wheel. Decision support, not for clinical use.

# Any Debian-based image with python 3.11 (and its venv module) on PATH as `python`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- deps: the pinned dependencies of pyproject.toml; rebuilt only when pyproject.toml changes
FROM ${PYTHON_IMAGE} AS deps
# cuda: the PyPI torch wheels, which bundle the CUDA runtime (the host needs only the NVIDIA
# driver and the NVIDIA Container Toolkit). cpu: the CPU-only wheels, a much smaller image.
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
# For cpu, torch==X+cpu goes in first; it satisfies the torch==X pin of the second install.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && case "$TORCH_VARIANT" in \
        cuda) ;; \
        cpu) grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch.txt \
             && pip install --index-url "$TORCH_CPU_INDEX" -r /tmp/torch.txt ;; \
        *) echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
       esac \
    && pip install -r /tmp/requirements.txt

# --- build: the application wheel, without the model (that gets its own layer)
FROM deps AS build
COPY . /src
RUN if [ ! -f model/weights/fracture.pt ]; then \
        echo "model/weights/fracture.pt is missing: train or fetch the shipped model before building" >&2; \
        exit 1; \
    fi \
    && mkdir -p /opt/fracture/model \
    && mv model/weights/*.pt /opt/fracture/model/ \
    && pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: dependencies, application, model; runs as an unprivileged user. It starts from
# deps instead of copying /opt/venv out of it: the same image, without a second copy of several
# GB to write and store at every build.
FROM deps AS runtime
LABEL org.opencontainers.image.title="fracture-screening" \
      org.opencontainers.image.description="X-ray fracture screening pipeline. Decision support, not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fracture \
    && useradd --system --uid 10001 --gid fracture --create-home --home-dir /home/fracture \
       --shell /usr/sbin/nologin fracture \
    && mkdir -p /srv/fracture/inbox /srv/fracture/data \
    && chown -R fracture:fracture /srv/fracture
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/fracture \
    MPLCONFIGDIR=/tmp/matplotlib \
    FRACTURE_INBOX=/srv/fracture/inbox \
    FRACTURE_DATA_DIR=/srv/fracture/data \
    FRACTURE_MODEL_PATH=/opt/fracture/model/fracture.pt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY --from=build /opt/fracture/model /opt/fracture/model
# Fail the build, not the first deployment, on a broken install or an unreadable model.
RUN for f in /opt/fracture/model/*.pt; do \
        python -c "import sys, pathlib, model.checkpoint as c; print(sys.argv[1], c.load(pathlib.Path(sys.argv[1])).version)" "$f" \
        || exit 1; \
    done \
    && test -f "$FRACTURE_MODEL_PATH" \
    && python -c "import bench.pipeline as b; n = len(list(b.SAMPLES.glob('*.jpg'))); assert n, 'no bench samples'; print(n, 'bench samples')" \
    && fracture --help > /dev/null

USER fracture
WORKDIR /home/fracture
EXPOSE 8501
# Everything in one container (private broker, SQLite) for a quick look; the compose file
# runs each service on its own instead.
CMD ["fracture", "up"]
