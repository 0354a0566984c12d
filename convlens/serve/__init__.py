"""Serve a trained model over HTTP (FastAPI + uvicorn), with a page to try it."""

from convlens.serve.app import Limits, create_app

__all__ = ["Limits", "create_app"]
