"""The mini-zookeeper: broker membership, cluster metadata and leader election (docs/cluster.md)."""
