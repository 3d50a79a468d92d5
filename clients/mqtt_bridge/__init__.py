"""pi-mqtt-bridge: copies records between pikafka topics and an MQTT broker, at least once in both directions.

One module per job: `config` (TOML and flags), `routes` (topic templates, envelopes, the loop guard), `mqtt_link`
(the paho client driven from asyncio), `to_mqtt` (pikafka -> MQTT with offsets committed after PUBACK),
`from_mqtt` (MQTT -> pikafka with PUBACK sent after the produce was acknowledged), `service` (the process).
See docs/bridge.md.
"""
