"""Real throwaway services for the tests, ``bench/``, ``soak/`` and ``make stack``.

One module per service, each running real processes on loopback:

- ``redis_server``: ``RedisServer`` (named so it does not shadow redis-py);
- ``postgres``: ``PostgresCluster``, and ``connect_url`` for plain SQL;
- ``app``: ``AppProcess`` (Daphne or uvicorn), ``manage()``, ``child_env()``,
  and ``ensure_users``/``ensure_room`` (the management commands);
- ``deployment``: ``Deployment``, N instances sharing a database and Redis,
  with the API calls a test makes as its users;
- ``http``: the one HTTP client; ``ws``: the one WebSocket client of tests;
- ``waiting``: ``wait_until``/``async_wait_until``, polling with a deadline;
- ``process``: the child-process plumbing the services share; ``tls``: a
  throwaway CA and certificates; ``stack``: ``make stack`` itself.
"""
