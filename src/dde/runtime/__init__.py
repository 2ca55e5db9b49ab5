"""Assembly: the one place the parts are wired together.

- :mod:`dde.runtime.core` — the parts every process of one router shares (configuration,
  ledger, spool, router, ingest pipeline) and the one ``apply(settings)`` for live changes;
- :mod:`dde.runtime.main` — the main process (``dde serve``): the core plus delivery,
  health probes, loads, the receiver (processes) and the web server;
- :mod:`dde.runtime.receiver_process` — a receiver process: the core plus a Storage SCP.

The CLI builds a core too (``RouterCore.for_tool``) for ``route explain`` and
``reconcile --repair``, so they decide and ingest exactly as the running router does.
"""
