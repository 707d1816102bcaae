"""``run/build.big_first``: the few jobs big enough to run alone at the end start first."""

from __future__ import annotations

from types import SimpleNamespace

from mergefile.run.build import big_first


def _jobs(*sizes: int) -> list:
    return [SimpleNamespace(name=f"t{i}", nbytes=n) for i, n in enumerate(sizes)]


def test_embedding_and_lm_head_go_first_the_rest_keeps_its_order():
    jobs = _jobs(65, 6, 6, 2, 6, 6, 2, 65)  # embed, a layer's tensors..., lm_head
    out = big_first(jobs, slots=2)
    assert [j.name for j in out] == ["t0", "t7", "t1", "t2", "t3", "t4", "t5", "t6"]
    assert sorted(j.name for j in out) == sorted(j.name for j in jobs)


def test_even_sizes_change_nothing_and_one_slot_has_a_higher_bar():
    even = _jobs(5, 5, 5, 5, 5, 5, 5, 5, 5)
    assert big_first(even, slots=2) == even
    assert [j.name for j in big_first(_jobs(10, 1, 1, 10), slots=1)] == ["t0", "t3", "t1", "t2"]
    assert [j.name for j in big_first(_jobs(3, 1, 1, 3, 1, 1, 1, 1), slots=1)] == [f"t{i}" for i in range(8)]
    assert big_first([], slots=2) == []
