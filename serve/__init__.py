"""serve: a verified artifact behind vLLM's OpenAI-compatible server, and a bounded load client.

The stage's public entry (the Python API):

    serve(ServeConfig(artifact=ART)) -> int          serve until Ctrl-C / SIGTERM
    Server(ServeConfig(...))                         a context manager: start, yield, stop the whole group
    run_load(LoadConfig(url=...)) -> dict            N concurrent streaming clients; format_load(result)
    models(url) -> [names]                           what a server offers
"""

from .config import LoadConfig, ServeConfig
from .load import format_load, run_load
from .server import Server, check_artifact, command, models, serve

__all__ = [
    "LoadConfig",
    "ServeConfig",
    "Server",
    "check_artifact",
    "command",
    "format_load",
    "models",
    "run_load",
    "serve",
]
