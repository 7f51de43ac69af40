"""`python -m bench [--quick]`: end-to-end throughput and latency of the real pipeline, next to a bare
three-stage aio-pika relay and the same three trivial stages on our runtime. See docs/benchmarks.md."""
