"""Fault suite: real worker processes under kill -9, broker and database faults, duplicates, reordering,
poison messages and service restarts, judged by the reconciler (`apptctl.reconcile`)."""
