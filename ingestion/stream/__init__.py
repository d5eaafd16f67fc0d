"""Stream sources: micro-batches from a NATS JetStream stream through a durable pull consumer.

One run fetches what is pending (up to ``max_messages``), loads it with dlt, and only **after the
load is committed in the warehouse** acknowledges the messages. A run that dies before the ack
leaves them unacknowledged: JetStream redelivers them (after ``ack_wait``), and the merge on the
event's key makes the redelivery harmless, so nothing is lost and nothing lands twice. A run that
fails in a way it notices (the load fails) negatively acknowledges them for prompt redelivery.

A message that is not a JSON object, lacks its key, or has a value that does not fit its declared
type is a poison message: it goes to ``_quarantine`` with its stream sequence and the reason, and
is acknowledged like the others so it never blocks the stream.

A source declared ``optional: true`` is skipped, and says so, when its server cannot be reached.
"""

from ingestion.stream.reader import Batch, StreamReader, StreamUnreachable, connect, safe_servers, servers_for
from ingestion.stream.source import stream_source

__all__ = [
    "Batch",
    "StreamReader",
    "StreamUnreachable",
    "connect",
    "ingest",
    "safe_servers",
    "servers_for",
    "stream_source",
]
