"""The router's HTTP side: REST API, ``/metrics``, ``/healthz`` and the upload path.

``server`` builds the FastAPI application over the running router's parts (``services``)
and serves it with uvicorn in a background thread of the router process. Modules:

- ``auth``        the API token, bearer and session-cookie authentication, CSRF, login;
- ``errors``      every error as JSON ``{"error": ..., "detail": ...}``;
- ``limits``      request body limits (413 JSON);
- ``api``         configuration routes (endpoints, rules, route explain);
- ``api_ledger``  ledger routes (upload, instances, queue, stats);
- ``upload``      reading uploaded files and zips safely, then the durable receive path;
- ``stats``       the ``/api/stats`` document;
- ``metrics``     Prometheus metrics (counters fed by the receive and delivery paths);
- ``health``      the readiness checks of ``/healthz``;
- ``schemas``, ``schemas_ledger``  the response models of the JSON routes (``/docs``).

(``dde token`` is :mod:`dde.cli.token_command`.)
"""
