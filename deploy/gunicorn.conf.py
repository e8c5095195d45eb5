"""The gunicorn settings `duckcast serve --workers N` uses, for running gunicorn by hand:
    gunicorn -c deploy/gunicorn.conf.py --bind 0.0.0.0:8000 'service.api.app:create_app()'
They live in the package (service/gunicorn_conf.py), so an installed duckcast needs no
checkout; override one by assigning it below the import (tests/test_deploy_files.py checks
that, as committed, this file yields exactly the package's settings)."""

from service.gunicorn_conf import *  # noqa: F403
