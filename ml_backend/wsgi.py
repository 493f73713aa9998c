"""WSGI entry point: the only place that builds the app from the environment.

    gunicorn --config ml_backend/gunicorn_conf.py ml_backend.wsgi:app
"""

from ml_backend.app import create_app
from ml_backend.config import Settings

app = create_app(Settings())
app.extensions["llm_backend"].warm_up()
