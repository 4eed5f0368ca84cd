"""The archiver: one shard's stream, drained into gzip JSONL files on disk, at least once.

- `service`: `Archiver`, the durable pull consumer and the pipelined write/fsync/ack loop;
- `lines`: the archive line format (built here, read back by recovery and the audit);
- `writer`: the files being written (gzip members, fsync, rotation);
- `manifest`: the layout on disk and the per-day manifest;
- `recovery`: finishing what a crashed archiver left;
- `verify`: `ssmd archive verify`, the audit of an archive;
- `reporting`: Prometheus `/metrics` and the Redis report;
- `command`: `ssmd run archiver`.
"""
