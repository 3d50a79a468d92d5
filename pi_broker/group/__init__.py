"""Consumer groups on the broker: membership (a pure state machine), assignment strategies, committed offsets kept
in the internal topic `__consumer_offsets`, and the coordinator tying them to the broker. See docs/groups.md."""
