"""portal_sync: projects requests and result events into the portal read store."""
