"""The interning table both backends share equal exits through (hvcore._intern)."""

from __future__ import annotations

from hvcore._intern import InternTable


def test_put_keeps_and_returns_the_value() -> None:
    table: InternTable[int, str] = InternTable(limit=4)
    assert table.put(1, "one") == "one"
    assert table.get(1) == "one"
    assert table.get(2) is None


def test_a_full_table_starts_again_empty() -> None:
    table: InternTable[int, int] = InternTable(limit=3)
    for key in range(3):
        table.put(key, key)
    assert len(table) == 3
    table.put(3, 3)
    assert dict(table) == {3: 3}


def test_it_keeps_no_instance_dict() -> None:
    assert not hasattr(InternTable(), "__dict__")
