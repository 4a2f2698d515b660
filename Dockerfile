# syntax=docker/dockerfile:1
# The flow-run image: what the tweetflow-ecs work pool starts on ECS for every
# run of the retrain/weekly-ecs deployment. The ECS worker overrides CMD with
# Prefect's own flow-run command; the deployment's pull step then changes into
# /opt/tweetflow, so the code must live exactly there. The same image is a Dask
# worker for batch inference in partitions:
#         docker run tweetflow dask worker tcp://SCHEDULER:8786
# (the project is on PYTHONPATH, so a worker imports the tasks it is sent).
#
# Build:  docker build -t tweetflow .
# With a champion model baked in (a published model/ bundle staged inside the
# build context, see deployments/no-champion/NO_CHAMPION.txt):
#         docker build --build-arg CHAMPION_MODEL=champion -t tweetflow .
FROM prefecthq/prefect:3.9.1-python3.12

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONPATH=/opt/tweetflow \
    TWEETFLOW_CHAMPION_DIR=/opt/tweetflow/champion

# An unprivileged user with a fixed uid (ECS task definitions and volume
# permissions can refer to it) and a home for Prefect's local settings.
RUN groupadd --system --gid 10001 tweetflow \
    && useradd --system --no-log-init --uid 10001 --gid tweetflow \
        --create-home --home-dir /home/tweetflow --shell /usr/sbin/nologin tweetflow

WORKDIR /opt/tweetflow

# Dependencies first, in their own layer: it is rebuilt only when the locks
# change. requirements-pip.lock pins the installer (the base image's pip may be
# too old for hash checking); requirements.lock pins the whole runtime tree
# with every file's hash (make lock), so every build installs the same files.
COPY requirements-pip.lock requirements.lock ./
RUN python -m pip install --no-cache-dir --require-hashes -r requirements-pip.lock \
    && python -m pip install --no-cache-dir --require-hashes -r requirements.lock \
    && python -m pip check

# Project code, owned by root and read-only to the runtime user.
COPY prefect.yaml pyproject.toml ./
COPY config/ config/
COPY deployments/ deployments/
COPY data_contracts/ data_contracts/
COPY tasks/ tasks/
COPY flows/ flows/

# The champion model bundle, when CHAMPION_MODEL names one; by default an
# empty placeholder, so the image builds from a plain checkout (an empty
# value falls back to it too, rather than copying the whole context).
ARG CHAMPION_MODEL=deployments/no-champion
COPY ${CHAMPION_MODEL:-deployments/no-champion}/ champion/

# The default artifacts_dir (./artifacts) must be writable by the runtime
# user; it dies with the container, so ECS runs pass an s3:// artifacts_dir
# (or mount a volume here) to keep their outputs.
RUN install -d -o tweetflow -g tweetflow /opt/tweetflow/artifacts

# The commit the image was built from: MLflow runs record it as
# mlflow.source.git.commit (the image has no .git). Last, so it costs no cache.
ARG GIT_COMMIT=""
ENV TWEETFLOW_GIT_COMMIT=${GIT_COMMIT}

USER 10001:10001

CMD ["python", "-m", "flows.retrain", "--help"]
