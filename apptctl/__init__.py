"""apptctl: the operations CLI (migrate, topology, workers, demo)."""
