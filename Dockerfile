# One image for every DPS process; docker-compose.yml picks the command and the settings (DPS_RING: live).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md manage.py ./
COPY dps_site dps_site
COPY pubsub pubsub
COPY topicserver topicserver
RUN pip install --no-cache-dir .
CMD ["daphne", "-b", "0.0.0.0", "-p", "4000", "--websocket_timeout", "-1", "dps_site.asgi:application"]
