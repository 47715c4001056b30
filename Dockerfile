# One image for every TopChef process: mirror, beat, workers, Flower, the API.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --create-home topchef
USER topchef
ENTRYPOINT ["topchef"]
