"""Infrastructure: RabbitMQ topology, database schema and migrations, local service helpers."""
