# The router as a container image: `docker build -t dde .` (see README, "Docker Compose").
# One process tree per container: `dde serve` with its receiver processes. The state folder
# (configuration, rules, ledger, spool, API token) is the volume /var/lib/dde; on the first
# start it gets the reference configuration (deploy/docker/dde.yaml), which `dde endpoints …`
# (`docker compose exec router dde …`) and the API then change while the router runs.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DDE_HOME=/var/lib/dde \
    TCP_NODELAY=1

RUN useradd --system --home-dir /var/lib/dde --create-home --uid 10001 dde \
    && install -d -o dde -g dde -m 0700 /var/lib/dde-spool

WORKDIR /opt/dde
COPY pyproject.toml README.md ./
COPY src ./src
COPY deploy/docker/dde.yaml ./dde.yaml
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER dde
VOLUME ["/var/lib/dde"]
# 11113: DICOM (the AE title DYNAMIC_DICOM_MW); 8080: web console, REST API, /metrics.
EXPOSE 11113 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
CMD ["sh", "-c", "test -f \"$DDE_HOME/dde.yaml\" || cp /opt/dde/dde.yaml \"$DDE_HOME/dde.yaml\"; exec dde serve"]
