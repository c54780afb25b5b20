"""The cluster: replicas of a model, the router that picks one, health and failover."""
