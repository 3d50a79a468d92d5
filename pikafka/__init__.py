"""pikafka's shared core: the wire format, the error table, CoAP paths, config loading and service lifecycle.

Every other package (pi_broker, pi_zookeeper, clients) may import this one; it imports none of them.
"""

__version__ = "0.1.0"
