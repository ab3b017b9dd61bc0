"""The embedded store, ``MockDB``: the ledger in this process's memory, optionally journaled.

Modules
-------
``store``
    ``MockDB``: the public operations and the order of the locks.
``trail``
    ``AuditTrail``: the chain's head, each account's latest record, recent records.
``archive``, ``checkpoints``, ``backup``
    Records and resolved holds read back from the journal; checkpoints; the online copy.
``index``
    ``RecordIndex``: the records in SQLite, for filtered history and admin pages.
``holds``
    ``HoldBook`` (holds by id and the pending ones by account) and the expiry sweeper.
``reversals``, ``reversal_operations``
    ``ReversalBook`` (how much of each transaction was reversed) and ``reverse``.
``keys``
    ``IdempotencyTable``: idempotency keys and their outcomes.
``durability``, ``journal``, ``persistence``, ``recovery``
    The data directory: entries queued in audit order and made durable by group
    commit, their on-disk format, snapshots, and reading it all back at a start.

Locking
-------
Each lock is the only owner of its data; a path takes them in this order, may skip
any, and never takes one twice (the readerwriterlock locks are not reentrant):

0. ``Durability._snapshot_lock`` (one snapshot at a time), by a snapshot only.
1. ``MockDB._rw``, a fair ``readerwriterlock``, guards the balances, versions and
   holds (``_accounts`` and the ``HoldBook``). Reads share it; every change holds it
   exclusively, and the funds check and the mutation happen under that one write
   lock. Lock handles are generated afresh on every use and never stored; waits for
   it are bounded by the operation's deadline.
2. ``MockDB._credentials_lock`` guards the token digests, apart from ``_rw`` so that
   authenticating never waits behind a balance writer; a digest is added right
   after its account, under ``_rw``. ``ReversalBook._lock`` (the reversed amount of
   each transaction reversed at all) sits in the same place and is never held with
   it: a reversal checks and adds to its amount while ``_rw`` is held for writing
   (with the funds check); history and audit pages read amounts under it alone.
3. ``AuditTrail._lock`` guards the recent audit records, each account's latest
   record and the chain's last hash. Records of applied operations are appended while the write lock is
   still held, so the audit order is exactly the order in which balances changed.
4. ``IdempotencyTable._lock``: a key's outcome is handed to the table while the
   trail's lock is held (so a snapshot sees every journaled key); the table never
   calls back into the store while it holds its mutex.
5. ``Journal._condition``, only to queue a frame or to wait for a sync, never held
   across the write or the sync itself.
6. ``OperationCounters._lock`` and ``MockDB._seen_lock``, last, for a few dictionary
   updates.

The expiry sweeper's condition guards only its heap and is never held while the
sweeper takes ``_rw``; ``AuditTrail._check_lock`` (one chain check at a time) is taken
with no other lock held, and so is the journal's ``DurationHistogram._lock`` (how long
its syncs took), by the sync's leader right after the sync. ``CheckpointBook._lock``
is taken alone or after ``Durability._snapshot_lock``. ``RecordIndex._lock`` (the SQLite
index of the records) is taken with no other lock held, never on the write path, and
held while it reads records from the trail (so before ``AuditTrail._lock``); its
background thread catches up once a second. ``RecordArchive._lock`` guards
only its table of open segment files, and records are read from disk with no lock
held (what the index holds never changes; the trail lets a record leave its cache
only once the index holds it).

Holds expire no later than the next operation that touches either of their
accounts (each write, and a balance read, expires what is due first) or the
sweeper's next pass, whichever comes first.

Durability
----------
Without a data directory, none: everything lives in this process's memory.

With one (``MockDB.open``), every state change is also written to a write-ahead
journal as one entry holding the audit records it appends and the states it leaves
behind: account creations, every money and hold operation, FAILED ones too,
expiries, and the outcome of an idempotent request in the same entry as its
operation. Entries are queued under the trail's lock, so the journal's order is the
audit order; the fsync happens after every lock is released, shared by all requests
waiting at that moment (group commit), and a write method returns only once its
entries are durable. Reads never show a state that is not durable yet: a balance or
hold read waits for the entry that last changed the account, history and audit
pages stop at the last durable record. If the journal fails, writes are refused
(``StorageUnavailable``) before anything is applied, and reads of accounts whose last
change was not made durable are refused too; everything else keeps being served.
The journal's segments are never deleted: they are the history, read back through
``records.idx`` (``archive``) once a record has left the bounded cache of recent
ones. ``snapshot`` writes the state (no history) with a checkpoint, so that a start
loads one file and replays the journal after it.
"""

from app.ledger.memory.durability import SnapshotReport
from app.ledger.memory.store import MockDB

__all__ = ["MockDB", "SnapshotReport"]
