# syntax=docker/dockerfile:1
# The image of each Python service; SERVICE chooses which: gateway, cache-svc,
# persistence-svc or workers (one image for both workers; the arguments choose the queue).
# Build context: the repository root.
#   docker build --build-arg SERVICE=gateway -t chinook/gateway .
# LIVE_RELOAD=1 adds watchfiles, for live development only (the Tiltfile sets it).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG SERVICE

# Wheels of every project here, with the gRPC stubs generated from protos/ into the
# shared package (the committed copies are not in the context). The build backend and
# the stub generator come from their hashed lock; nothing else is fetched.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY locks/build.txt locks/
RUN pip install --no-cache-dir --require-hashes -r locks/build.txt
COPY protos/ protos/
COPY pyproject.toml ./
COPY chinook/ chinook/
RUN python protos/generate.py
COPY services/ services/
COPY workers/ workers/
# One folder of wheels per service, named as SERVICE names it (its project's folder).
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index --wheel-dir /wheels/shared . \
 && for project in ./services/* ./workers; do \
        pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index --wheel-dir "/wheels/${project##*/}" "$project"; \
    done

# The service's dependencies from its hashed lock, installed before any code so this
# layer stays cached; then the shared project and the service's, without dependencies.
FROM ${PYTHON_IMAGE} AS venv
ARG SERVICE
ARG LIVE_RELOAD=""
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY locks/${SERVICE}.txt locks/live-reload.txt /locks/
RUN pip install --no-cache-dir --require-hashes -r "/locks/${SERVICE}.txt" ${LIVE_RELOAD:+-r /locks/live-reload.txt}
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps --no-index /wheels/shared/*.whl "/wheels/${SERVICE}/"*.whl

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
# Owned by the app user so that live updates (Tilt) can sync into the installed packages
# of a running container; Kubernetes and docker compose run it with a read-only root
# filesystem.
COPY --from=venv --chown=app:app /opt/venv /opt/venv
USER 10001:10001

FROM runtime AS gateway
EXPOSE 5000
# Checks the settings, then serves on GATEWAY_HOST:GATEWAY_PORT under granian (gateway/serving.py).
ENTRYPOINT ["python", "-m", "gateway"]

FROM runtime AS cache-svc
# glibc gives each thread that allocates its own heap arena and keeps what was freed in
# it: with bulks handled on several gRPC threads, two arenas keep the peak ~15 % lower.
ENV METRICS_PORT=9101 \
    MALLOC_ARENA_MAX=2
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "cache_svc"]

FROM runtime AS persistence-svc
ENV METRICS_PORT=9102
EXPOSE 50052 9102
ENTRYPOINT ["python", "-m", "persistence_svc"]

FROM runtime AS workers
# The duplication worker runs the same image with
#   --queues duplicate_queue --hostname duplication@%h --concurrency 1 --loglevel INFO
# and METRICS_PORT=9104.
ENV METRICS_PORT=9103
EXPOSE 9103
ENTRYPOINT ["celery", "--app", "worker.celery_app", "worker"]
CMD ["--queues", "write_back_queue", "--hostname", "write-back@%h", "--concurrency", "2", "--loglevel", "INFO"]

# The image built: the stage SERVICE names.
FROM ${SERVICE}
