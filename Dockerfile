# One image for every TopChef process: mirror, beat, workers, Flower, the API.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --create-home topchef
# Where docker-compose mounts the registration keys: owned by the user, so a new
# volume there is too (`topchef keys init` writes into them).
RUN mkdir -p /keys /public && chown topchef /keys /public
USER topchef
ENTRYPOINT ["topchef"]
