"""The admin API (FastAPI): ``create_app(settings, sessionmaker)`` in :mod:`backend.api.app`.

Authentication, roles and CSRF live in :mod:`backend.api.security`; routes in ``routes_*.py``.
"""
