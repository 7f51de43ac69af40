# One image for every worker, the portal API and apptctl; the command picks the role (docker-compose.yml).
FROM python:3.11-slim
ARG REVISION=dev
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 APPT_BUILD_REVISION=$REVISION
WORKDIR /app
# Exactly the pinned, hash-checked runtime dependencies (`make lock` regenerates requirements.lock).
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml ./
COPY contracts ./contracts
COPY workers ./workers
COPY infra ./infra
COPY apptctl ./apptctl
COPY portal_api ./portal_api
RUN pip install --no-cache-dir --no-deps .
USER nobody
# SIGTERM drains a worker (APPT_DRAIN_TIMEOUT_S); compose's stop_grace_period gives it the time.
STOPSIGNAL SIGTERM
CMD ["apptctl", "--help"]
