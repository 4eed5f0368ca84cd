"""The connector: one shard's Kalshi WebSocket feed, forwarded into the shard's NATS stream.

- `settings`: what a replica is told (the `ssmd run connector` options);
- `symbols`: the shard's symbols, resolved at start-up and refreshed intraday;
- `forwarding`: the hot path, socket → bounded buffer → acknowledged publisher;
- `reporting`: Prometheus `/metrics` and the Redis reports;
- `service`: `Connector`, which composes them with the membership and the Kalshi client;
- `command`: `ssmd run connector`.
"""
