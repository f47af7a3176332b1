import numpy as np

from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask, band_name


def test_reference_is_valid_and_any_bag_order_is_accepted():
    task = ChainBagTask()
    p = task.eval_sets()["M44"][0]
    assert task.verify(p, p.solution).correct
    chain, bag = p.steps[:4], p.meta["bag"]
    # the bag summed in the question's order (not the reference's) is another valid path
    value = int(p.steps[3][-2])
    steps = []
    for d in bag:
        steps.append(f"{value}+{d}={(value + d) % 10};")
        value = (value + d) % 10
    other = "".join(chain) + "".join(steps) + f"A{value}"
    assert str(value) == p.answer
    assert task.verify(p, other).correct


def test_verifier_rejects_wrong_paths():
    task = ChainBagTask()
    p = task.eval_sets()["C6"][0]
    bad_step = p.steps[0][:-2] + str((int(p.steps[0][-2]) + 1) % 10) + ";"
    v = task.verify(p, bad_step + "".join(p.steps[1:]) + p.final)
    assert v.answer_correct and not v.path_valid and not v.correct
    assert not task.verify(p, "".join(p.steps) + "A" + str((int(p.answer) + 1) % 10)).correct
    assert not task.verify(p, "".join(p.steps)).correct  # no final answer
    assert not task.verify(p, "".join(p.steps[1:]) + p.final).correct  # a skipped step
    swapped = "".join(reversed(p.steps[:2])) + "".join(p.steps[2:]) + p.final
    assert not task.verify(p, swapped).correct  # the chain has one order


def test_same_seed_same_problems_and_eval_sets_fixed():
    task = ChainBagTask()
    a = task.sample(np.random.default_rng(3), 20)
    b = task.sample(np.random.default_rng(3), 20)
    assert a == b
    assert ChainBagTask().eval_sets() == task.eval_sets()
    held_out = {p.question for ps in task.eval_sets().values() for p in ps}
    assert not held_out & {p.question for p in task.sample(np.random.default_rng(0), 2000)}


def test_knobs_shape_the_problems():
    task = ChainBagTask(ChainBagConfig(chain_lengths=(2, 2), bag_sizes=(3, 3), ops="*", bands=((1, 1),)))
    for p in task.sample(np.random.default_rng(0), 10):
        assert len(p.meta["ops"]) == 2 and len(p.meta["bag"]) == 3 and set(p.meta["ops"]) == {"*"}
        assert p.band == "M23" and len(p.steps) == 5
    assert band_name(5, 0) == "C5" and band_name(0, 4) == "B4" and band_name(3, 3) == "M33"


def test_path_matched_reference_follows_the_students_bag_order():
    task = ChainBagTask()
    p = task.eval_sets()["B4"][1]
    student_order = list(reversed([int(s[2]) for s in p.steps]))
    value, steps = p.meta["start"], []
    for d in student_order[:2]:  # the student has written two bag steps so far, one of them wrong
        steps.append(f"{value}+{d}={(value + d + 1) % 10};")
        value = (value + d) % 10
    matched = task.path_matched(p, "".join(steps))
    assert [int(s[2]) for s in matched.steps[:2]] == student_order[:2]
    assert sorted(int(s[2]) for s in matched.steps) == sorted(p.meta["bag"])
    assert task.verify(matched, matched.solution).correct and matched.answer == p.answer


def test_copy_variant_is_consistent_but_unpredictable():
    task = ChainBagTask()
    p = task.eval_sets()["M64"][0]
    c = task.copy_variant(p, np.random.default_rng(0))
    assert len(c.steps) == len(p.steps) and c.question == p.question
    for prev, nxt in zip(c.steps, c.steps[1:]):
        assert prev[-2] == nxt[0]  # each step starts from the previous (random) result
    assert c.final == f"A{c.steps[-1][-2]}"
    assert c.solution != p.solution


def test_reasoning_strips_the_final_answer():
    task = ChainBagTask()
    assert task.reasoning("1+2=3;A3") == "1+2=3;"
    assert task.reasoning("1+2=3;") == "1+2=3;"


def test_a_training_range_the_held_out_sets_cover_is_refused_not_a_hang():
    import pytest

    cfg = ChainBagConfig(
        chain_lengths=(0, 0), bag_sizes=(1, 1), min_steps=1, bands=((0, 1),), eval_size=1000, probe_size=8
    )  # fmt: skip  (10 x 10 questions, all held out)
    with pytest.raises(ValueError, match="leave almost no question outside the held-out"):
        ChainBagTask(cfg).sample(np.random.default_rng(0), 1)


def test_bands_that_share_a_name_are_refused():
    import pytest

    for bands, message in (
        (((1, 12), (11, 2)), r"bands \(1, 12\) and \(11, 2\) share the evaluation band name M112"),
        (((4, 4), (0, 4), (4, 4)), r"bands \(4, 4\) and \(4, 4\) share the evaluation band name M44"),
    ):
        with pytest.raises(ValueError, match=message):
            ChainBagConfig(bands=bands)
    assert list(ChainBagTask().eval_sets()) == ["C6", "B4", "M44", "M64"]
