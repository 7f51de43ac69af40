"""The fault test on a three-node RabbitMQ cluster (infra/cluster.sh, docs/scaling.md)."""
