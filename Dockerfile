# One image for every Tocsin process; docker-compose.yml picks the command
# (tocsin db upgrade | producer | worker). The default runs the embedded all-in-one mode.
# 3.12.6+ carries the CPython fixes for CVE-2024-6923 (email header injection) and
# CVE-2023-27043 (email address parsing).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies come only from the hashed lock (scripts/lock.sh), in a layer of their own
# that a code change does not rebuild; the package itself adds none (--no-deps), and
# pip check proves the lock covers it.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock

# Migrations ship inside the package (the `migrations` package), so the source tree
# is not needed at run time.
COPY . /tmp/tocsin
RUN pip install --no-deps /tmp/tocsin && pip check && rm -rf /tmp/tocsin

RUN useradd --create-home --uid 10001 tocsin
USER tocsin
WORKDIR /home/tocsin

EXPOSE 9464
EXPOSE 8080
CMD ["tocsin", "run"]
