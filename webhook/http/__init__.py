"""HTTP: the Starlette application, its routes, metrics, TLS and the uvicorn server."""
