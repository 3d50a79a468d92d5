"""The pikafka broker service: partitioned segment-file log on disk, served over CoAP."""
