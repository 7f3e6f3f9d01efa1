# One image for every Tocsin process; docker-compose.yml picks the command
# (tocsin db upgrade | producer | worker). The default runs the embedded all-in-one mode.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Migrations ship inside the package (the `migrations` package), so the source tree
# is not needed at run time.
COPY . /tmp/tocsin
RUN pip install /tmp/tocsin && rm -rf /tmp/tocsin

RUN useradd --create-home --uid 10001 tocsin
USER tocsin
WORKDIR /home/tocsin

EXPOSE 9464
CMD ["tocsin", "run"]
