"""One lock for the ML stack's imports that happen on first use.

transformers exposes its classes through a lazy module that is not thread-safe: two threads that run
`from transformers import AutoTokenizer` at once in a fresh process can both find it half-initialised, and one
gets `ImportError: cannot import name 'AutoTokenizer'`. The API runs jobs on two threads of one process, so the
first two jobs that load a router can race. Every lazy import of the ML stack in routers/ (and the import of a
router's module, which may import transformers at its top) holds this lock; re-entrant, since a router module
imported under it may import others that take it again.
"""

from __future__ import annotations

import threading

ML_IMPORT_LOCK = threading.RLock()
