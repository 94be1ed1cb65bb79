"""Celery worker for dfmscd jobs: claims a job row, runs the Distiller, stores the students."""
