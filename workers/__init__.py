"""The three workers of the modify pipeline and the runtime they share."""
