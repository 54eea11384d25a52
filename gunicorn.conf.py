"""gunicorn reads this file by itself when started in the checkout: `gunicorn 'webapp:create_app()'`.

The settings and hooks live in the package (webapp/gunicorn/settings.py), so an installed wheel
has them too: `gunicorn -c python:webapp.gunicorn.settings 'webapp:create_app()'` anywhere.
"""

# gunicorn takes every module-level name that is a setting or a hook, and ignores the rest.
from webapp.gunicorn.settings import *  # noqa: F403
