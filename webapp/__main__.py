"""`python -m webapp ...`: the same commands as the `webapp` console script (webapp/cli.py)."""

from webapp.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
