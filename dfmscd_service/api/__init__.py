"""The dfmscd web service (FastAPI): teachers in, distillation jobs on Celery, students out."""
