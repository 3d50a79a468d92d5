"""The mini-zookeeper: broker membership, cluster metadata and leader election (arrives with the cluster issue)."""
