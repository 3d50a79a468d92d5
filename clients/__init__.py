"""pikafka's Python clients: an asyncio Producer and Consumer, topic administration, and the `pikafka` command."""

from clients.admin import Admin
from clients.consumer import Consumer
from clients.producer import Producer
from clients.records import ConsumerRecord, RecordMetadata, TopicPartition
from pikafka.errors import ErrorCode, PikafkaError

__all__ = [
    "Admin",
    "Consumer",
    "ConsumerRecord",
    "ErrorCode",
    "PikafkaError",
    "Producer",
    "RecordMetadata",
    "TopicPartition",
]
