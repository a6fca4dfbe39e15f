"""A node's side of the backbone, under the channel layer: delivering its stream to local members,
filling gaps from history, the presence replica, liveness, draining and following the ring."""
