"""Layer 0: errors, typed artifacts and atomic JSON I/O. Imports only the stdlib (and numpy)."""
