"""A RabbitMQ cluster's node list (AMQP_URL), the quorum group size, and the cluster test's timeline."""

import pytest

from infra.nodes import node_urls
from infra.topology import build
from tests.cluster.timeline import around, throughput
from workers.runtime.settings import Settings

NODES = "amqp://u:p@rabbit-1:5672/, amqp://u:p@rabbit-2:5672/,amqp://u:p@rabbit-3:5672/"


def test_amqp_url_names_one_node_or_a_clusters_nodes_in_order():
    assert node_urls("amqp://guest:guest@127.0.0.1:5672/") == ("amqp://guest:guest@127.0.0.1:5672/",)
    assert node_urls(NODES) == (
        "amqp://u:p@rabbit-1:5672/",
        "amqp://u:p@rabbit-2:5672/",
        "amqp://u:p@rabbit-3:5672/",
    )
    with pytest.raises(ValueError, match="separated by commas"):
        node_urls(" , ")


def test_quorum_queues_get_the_group_size_only_when_configured():
    assert all("x-quorum-initial-group-size" not in q.arguments for q in build("ns").queues)
    topology = build("ns", quorum_group_size=3)
    quorum = [q for q in topology.queues if q.arguments.get("x-queue-type") == "quorum"]
    assert quorum and all(q.arguments["x-quorum-initial-group-size"] == 3 for q in quorum)
    classic = [q for q in topology.queues if q.arguments.get("x-queue-type") == "classic"]
    assert classic and all("x-quorum-initial-group-size" not in q.arguments for q in classic)
    assert Settings(APPT_QUORUM_GROUP_SIZE="3").quorum_group_size == 3
    assert Settings(APPT_QUORUM_GROUP_SIZE="").quorum_group_size is None


def test_a_node_loss_shows_as_a_dip_and_a_gap_in_completions():
    # 10/s steadily, nothing from 100.0 to 104.0, then 5/s
    completions = [80 + i / 10 for i in range(200)] + [104 + i / 5 for i in range(350)]
    figures = around("kill -9 node 1", 100.0, completions)
    assert figures.before_per_s == 10.0
    assert figures.after_per_s == pytest.approx(16 * 5 / 20)
    assert figures.longest_gap_s == pytest.approx(4.1)
    assert figures.gap_starts_after_fault_s == pytest.approx(-0.1)
    assert figures.dip == pytest.approx(0.6)
    assert throughput([1.0, 2.0, 7.5], bucket_s=5.0) == [(0.0, 2), (5.0, 1)]


def test_the_aio_pika_method_the_cluster_connection_overrides_still_exists():
    """ClusterConnection picks the node in RobustConnection's one-attempt method (a private name): an
    aio-pika upgrade that renames it would silently pin every reconnection to one node."""
    from aio_pika.robust_connection import RobustConnection

    from infra.nodes import ClusterConnection

    assert callable(getattr(RobustConnection, "_RobustConnection__connect_transport", None))
    assert "_RobustConnection__connect_transport" in ClusterConnection.__dict__


def test_the_vhost_of_a_node_list_is_the_first_nodes():
    from apptctl.management import vhost_of

    assert vhost_of("amqp://u:p@rabbit-1:5672/prod,amqp://u:p@rabbit-2:5672/prod") == "prod"
    assert vhost_of(NODES) == "/"


def test_security_apply_puts_each_identitys_credentials_on_every_node_of_a_cluster():
    from infra.security.plan import _with_credentials

    url = _with_credentials(
        "amqp://guest:guest@127.0.0.1:5681/,amqp://guest:guest@127.0.0.1:5682/", "appt_policy_gate", "s3:cr/t"
    )

    assert node_urls(url) == (
        "amqp://appt_policy_gate:s3%3Acr%2Ft@127.0.0.1:5681/",
        "amqp://appt_policy_gate:s3%3Acr%2Ft@127.0.0.1:5682/",
    )
