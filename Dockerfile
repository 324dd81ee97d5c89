# botsim: one image for every process (worker, listener, api, migrations, sandbox).
# No secrets here: they come from the environment at run time (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin botsim

WORKDIR /src
COPY pyproject.toml README.md worker.py message_listener.py ./
COPY backend/ backend/
COPY bots/ bots/
COPY behavior_engine/ behavior_engine/
COPY sandbox/ sandbox/
COPY botsim/ botsim/
RUN pip install . && rm -rf /src/build /src/*.egg-info

# A writable working directory of the unprivileged user (BOTSIM_DATA_DIR defaults to .botsim).
WORKDIR /home/botsim
USER botsim

EXPOSE 8000 8082 9100
CMD ["botsim", "worker"]
