# layercut's images, one per role, from this one file:
#   docker build -t layercut .                                   every dependency: the Celery workers
#   docker build --build-arg DEPS=api -t layercut-api .          the API, `layercut keys`, the migration: no torch
# Roles:
#   API (default command):  uvicorn layercut.api.main:app --host 0.0.0.0 --port 8000
#   worker:                 celery -A layercut.worker.app worker -Q gpu --concurrency 1
#   migration:              alembic upgrade head
# PyTorch comes from the package registry (a CUDA build on Linux; it also runs on a CPU). For a smaller,
# CPU-only worker image: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

# all: pyproject.toml's dependencies and the `mlflow` extra (the mlflow step of service pipelines); api: only its `api`
# extra (no torch, no ML library;
# tests/ops/test_api_image.py runs the API, the migration and `layercut keys` with nothing else importable).
ARG DEPS=all
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    LAYERCUT_DATA_DIR=/data \
    LAYERCUT_ARTIFACT_ROOT=/artifacts \
    TORCH_HOME=/data/torch \
    NUMBA_CACHE_DIR=/cache/numba

WORKDIR /app

# Dependencies first (a layer that only changes with pyproject.toml), read from pyproject.toml itself.
COPY pyproject.toml README.md ./
RUN if [ -n "$TORCH_INDEX_URL" ] && [ "$DEPS" = all ]; then \
      pip install torch torchvision --index-url "$TORCH_INDEX_URL"; fi \
 && python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extra['mlflow'] if sys.argv[1] == 'all' else extra[sys.argv[1]]))" "$DEPS" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code, the migrations and alembic.ini (the migrate service and `layercut migrate` read them from /app).
COPY . .
RUN pip install --no-deps . \
 && rm -rf build *.egg-info \
 && useradd --create-home --uid 10001 --user-group layercut \
 && mkdir -p /data /artifacts /cache /datasets \
 && chown layercut:layercut /data /artifacts /cache

# A volume mounted at /artifacts (or at /cache, object storage's cache) starts with this folder's owner, so the
# non-root user can write it.
USER layercut
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# Forwarded headers are believed only from FORWARDED_ALLOW_IPS (uvicorn's variable; default 127.0.0.1).
CMD ["uvicorn", "layercut.api.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
