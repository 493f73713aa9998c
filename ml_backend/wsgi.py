"""WSGI entry point: the only place that builds the app from the environment.

    gunicorn --config ml_backend/gunicorn_conf.py ml_backend.wsgi:app
"""

from ml_backend.app import create_app, services_of
from ml_backend.config import load_settings

app = create_app(load_settings())  # a bad variable stops start-up with its name
services_of(app).inference.warm_up()
# Unfinished work of every project starts again by itself (a restart, lost jobs, webhooks
# deferred while Redis was down): a sweep now and every RECONCILE_INTERVAL_S, one per process.
services_of(app).reconciler.start()
