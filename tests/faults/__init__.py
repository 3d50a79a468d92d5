"""Fault tests: a real zookeeper and real brokers on loopback, killed, paused and restarted while a producer writes;
every test ends with the history checker (lost == duplicated == reordered == moved == 0)."""
