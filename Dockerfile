# One image for the API and the worker. The CUDA-enabled torch wheels come from the lock file;
# the worker gets the GPU through the compose file's device reservation.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir uv
WORKDIR /srv/dfmscd
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra service --no-install-project
COPY dfmscd ./dfmscd
COPY dfmscd_service ./dfmscd_service
COPY alembic.ini ./
RUN uv sync --frozen --no-dev --extra service
EXPOSE 8000
CMD ["uvicorn", "dfmscd_service.api.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-keep-alive", "75", "--loop", "asyncio"]
