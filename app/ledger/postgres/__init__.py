"""The PostgreSQL store, ``PostgresStore``: one ledger shared by many worker processes and hosts.

Modules
-------
``store``
    ``PostgresStore``: the public operations (accounts, money, batches, holds,
    history, audit, verification, health, metrics) and what each one locks.
``runner``
    ``Runner``: the pool of connections, and one unit of work run in one
    transaction, retried within its deadline (``MAX_ATTEMPTS``); a timeout counted
    and audited apart.
``unit``
    ``Unit``: one transaction on one connection (lock, expire due holds, write,
    chain the audit records, commit) and the statements it sends.
``holds``
    ``Holds``: creating, capturing and voiding holds.
``keys``
    ``Keys``: idempotency keys in the database, claimed in the transaction of the
    operation they guard.
``monitor``
    ``Monitor``: ``verify`` (the trail streamed from one snapshot, from the first
    record or from a checkpoint), ``health`` (the chain checked a stretch at a time)
    and ``stats``.
``checkpoints``
    ``Checkpointer``: a checkpoint every so many records (in a background thread) and
    at ``close``, each read from one snapshot; the list of checkpoints.
``sweeper``
    ``Sweeper``: the background thread that expires due holds and purges old keys.
``sql``
    The SQL text the reads share, and the decoding of an audit record's row.
``schema``, ``migrations/``
    Versioned migrations of the schema, applied when a worker starts.

Locks in the process
--------------------
Each guards only its own data; none is taken while another is held, nor held
across a wait on the database:

- the pool's (``Runner.pool``, psycopg_pool's own lock): a connection serves one
  thread at a time, from ``pool.connection()`` until it is given back;
- ``Runner._local``, not a lock but a thread-local: the connection of a keyed
  request (``Runner.inside``), in whose open transaction that thread's operations
  run, with the accounts its restarts must lock and its outcomes to count;
- ``Monitor._health_lock`` guards the chain checkpoint health resumes from
  (``_chain_checked``, ``_chain_hash``), the last problem health or ``verify`` found
  (``_chain_problem``) and the last figures of ``stats`` (``_figures_seen``);
- ``OperationCounters._lock``, for a few counter updates;
- each ``DurationHistogram._lock`` of ``OperationCounters.durations`` (pool waits,
  commits), for one observation, taken once the checkout or the commit is over;
- the sweeper's events: ``_wake`` (a pass now, or after its interval) and ``_stop``;
- ``Checkpointer._lock`` guards what the checkpointer knows (the last checkpoint,
  its background thread, whether it is closed); held only to decide and start that
  thread, after a write committed;
- ``PostgresStore._digests`` (the token digests this process has read) has none:
  a dict whose single operations are atomic under the GIL.

Row locks in the database
-------------------------
Every writing transaction takes them in one order (see ``unit``), so two of them
never wait for each other in a cycle:

1. the rows of ``accounts`` it touches, in one statement, sorted by username,
   ``FOR NO KEY UPDATE``;
2. holds are never locked themselves: a hold row changes only in a transaction that
   holds both of its parties' account rows, so those locks protect it;
3. the single ``chain_head`` row, last, just before ``COMMIT``.

A keyed request takes its ``idempotency_keys`` row first (an insert that waits on
the unique index while another transaction holds the same key), then the above.
Verifications and checkpoints read one ``REPEATABLE READ, READ ONLY`` snapshot and
take no row lock; a checkpoint's insert locks only its own new ``checkpoints`` row.
Concurrent migrations take turns on a transaction-scoped advisory lock (``schema``).
"""

from app.ledger.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
