"""modify_handler: the scheduling worker, source of truth; applies approved changes and office updates."""
