"""One websocket's life on a node: the Phoenix protocol consumer, its joins (recovery, presence),
the channel API, who is connecting (tokens, sessions, origins) and the per-socket limits."""
