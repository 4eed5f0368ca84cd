"""The runtime's NATS client: one sans-I/O protocol (`protocol`), one asyncio connection
(`connection`), and its two users, the acknowledged JetStream publisher (`publisher`) and
the archiver's pull consumer (`consumer`)."""
