"""Views derived from the log: queues, routing, the event store (see ARCHITECTURE section 5)."""
