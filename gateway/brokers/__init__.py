"""Everything the gateway asks of Redis: publishing, the replay buffer, Pub/Sub subscriptions, the embedded server."""
