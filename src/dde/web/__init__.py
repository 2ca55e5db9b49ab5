"""The router's HTTP side: REST API, ``/metrics``, ``/healthz`` and the upload path.

``server`` builds the FastAPI application over the running router's parts (``services``)
and serves it with uvicorn in a background thread of the router process. Modules:

- ``auth``     the API token, bearer and session-cookie authentication, CSRF;
- ``errors``   every error as JSON ``{"error": ..., "detail": ...}``;
- ``api``      configuration routes (endpoints, rules, route explain);
- ``ledger``   ledger routes (instances, queue, stats) and the upload;
- ``upload``   reading uploaded files and zips safely, then the durable receive path;
- ``metrics``  Prometheus metrics (counters fed by the receive and delivery paths);
- ``health``   the readiness checks of ``/healthz``.
"""
