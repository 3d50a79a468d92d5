"""pi-sensor: reads the machine's own sensors (and custom ones) and publishes SenML readings to pikafka, storing them
on disk while no broker is reachable.

One module per job: `config` (TOML and flags), `senml` (RFC 8428 records), `sources` (the readers), `disk_buffer`
(the bounded CRC-framed store-and-forward buffer), `forwarder` (buffer -> idempotent Producer, in order),
`service` (the process). See docs/sensor.md.
"""
