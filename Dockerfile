# One image for every worker and for apptctl; the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml ./
COPY contracts ./contracts
COPY workers ./workers
COPY infra ./infra
COPY apptctl ./apptctl
RUN pip install --no-cache-dir .
USER nobody
CMD ["apptctl", "--help"]
