"""The words of the provider's messages: counts agree with their nouns ("1 item", "2 items")."""

from __future__ import annotations

from airflow_provider_cutout.texts import plural


def test_plural_agrees_with_its_count():
    assert plural(1, "item") == "1 item"
    assert [plural(n, "item") for n in (0, 2, 10)] == ["0 items", "2 items", "10 items"]
    assert plural(1, "item was", "items were") == "1 item was"
    assert plural(3, "item was", "items were") == "3 items were"
    assert plural(10_000, "item", grouped=True) == "10,000 items" and plural(1000, "item") == "1000 items"
