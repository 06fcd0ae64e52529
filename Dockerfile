# The image of our services in docker-compose.yml: the REST API, the agent service, the Prefect
# server and the Prefect worker that runs experiments (all from this one install, so the server
# and the worker run the Prefect and FastAPI versions our constraints pin).
#   docker build -t airavata-prefect .                   # the services (last stage)
#   docker build --target testhost -t airavata-testhost . # the compose `test` profile's hosts
# Build context: the repository (.dockerignore keeps .venv, .git and caches out).

# Debian 12, as the project's machines: the test hosts' SLURM is its 22.05.
FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The package's folders are symlinked into airavata_prefect/ (COPY keeps the links; the wheel
# setuptools builds follows them). `pip install .` alone resolves to working versions too.
COPY . /src
RUN pip install -c /src/constraints.txt /src \
    && rm -rf /src
# One unprivileged login for every service (its name is the local-mode identity, the owner of
# the store: `docker compose exec api airavata user create NAME --admin`). Its uid is the owner
# of the OpenBao token file openbao-init writes (TOKEN_OWNER_UID in docker-compose.yml).
RUN useradd --uid 10001 --create-home --shell /bin/bash airavata \
    && mkdir -p /var/lib/airavata \
    && chown airavata:airavata /var/lib/airavata
ENV AIRAVATA_HOME=/var/lib/airavata

# The test profile's SLURM node and bare-metal host: Debian's SLURM 22.05, munge and sshd, with
# our package installed (so `airavata-agent` runs there in pilot mode), started by
# deployments/compose/testhost.sh as root.
FROM base AS testhost
RUN apt-get update \
    && apt-get install -y --no-install-recommends slurm-wlm slurm-wlm-jwt-plugin munge \
       openssh-server openssh-client curl \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/slurm_cluster.sh /usr/local/lib/airavata/slurm_cluster.sh
COPY deployments/compose/testhost.sh /usr/local/bin/airavata-testhost
RUN chmod 755 /usr/local/bin/airavata-testhost /usr/local/lib/airavata/slurm_cluster.sh
ENTRYPOINT ["/usr/local/bin/airavata-testhost"]

FROM base AS service
USER airavata
WORKDIR /var/lib/airavata
EXPOSE 4200 8080 50051
CMD ["airavata", "--help"]
