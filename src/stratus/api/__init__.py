"""The HTTP gateway: the OpenAI-compatible API, health, readiness and metrics.

from stratus.api import create_app
app = create_app(settings)      # a FastAPI app; serve it with uvicorn
"""

from stratus.api.app import create_app

__all__ = ["create_app"]
