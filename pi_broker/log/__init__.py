"""The broker's on-disk log: per-partition directories of segment files holding record batches exactly as produced.

Storage only: no networking, no aiocoap. PartitionLog is the entry point; the other modules are its parts.
"""

from pi_broker.log.flush_ticket import FlushTicket
from pi_broker.log.partition_log import AppendResult, PartitionLog

__all__ = ["AppendResult", "FlushTicket", "PartitionLog"]
