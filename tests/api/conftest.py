from service_kit import (  # noqa: F401  (fixtures)
    auth,
    client,
    other_auth,
    pg_url,
    redis_prefix,
    service,
    teacher,
    teacher_file,
)
