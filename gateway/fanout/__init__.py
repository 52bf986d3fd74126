"""From one upstream event to many clients: the hub, each client's subscriber, exact replay, batched writes."""
