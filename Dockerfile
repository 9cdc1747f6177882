# syntax=docker/dockerfile:1
# Build stage: compile wheels with the toolchain; none of it reaches the final image.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/energetiscope
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY trainer ./trainer
COPY certs ./certs
RUN /opt/energetiscope/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/energetiscope/bin/pip install --no-cache-dir .

# Runtime stage: the virtualenv only, as an unprivileged user, read-only friendly.
FROM python:3.11-slim
COPY --from=build /opt/energetiscope /opt/energetiscope
ENV PATH=/opt/energetiscope/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Model artifacts are mounted here (the trainer writes them to a PVC); none are baked in.
VOLUME ["/var/lib/energetiscope/artifacts"]
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["energetiscope"]
CMD ["serve", "--port", "8443", "--cert-dir", "/etc/energetiscope/tls"]
