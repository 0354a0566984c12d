"""Serve a trained model over HTTP (FastAPI + uvicorn), with a page to try it."""

from convlens.serve.app import create_app
from convlens.serve.limits import Limits

__all__ = ["Limits", "create_app"]
